//! A third-party backend, written from the `Store` and `Leases` docs alone:
//! one in-memory "server" shared by two layers, as two processes would
//! share a Redis. If the contract says enough, flights across the two
//! layers coalesce, waiters are woken by announcements (never by the lease
//! running out), and unstored answers reach them.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use support::{body, get, until, Origin, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::BackendFuture;
use tower_coalesce::{
    Announcer, Backend, BoxError, CoalesceConfig, CoalesceLayer, Completed, Completion, Entry,
    Found, Invalidation, Key, LeaseToken, Leases, Notice, Outcome, Purge, Purged, Store, StreamEnd,
    StreamRead, Streams, TryLock, Watch,
};

/// The shared "server": values with their expiry, leases, pass marks, and
/// one announcer per key that someone watches.
#[derive(Default)]
struct Server {
    values: HashMap<Key, (Entry, Instant)>,
    leases: HashMap<Key, (LeaseToken, Instant)>,
    passes: HashMap<Key, Instant>,
    announcers: HashMap<Key, Arc<Announcer>>,
    /// The purge order: the last position, and each target's last purge.
    purged_up_to: u64,
    purges: HashMap<Target, u64>,
}

/// What a purge names, as this backend records it.
#[derive(Hash, PartialEq, Eq)]
enum Target {
    Key(Key),
    Resource(Vec<u8>),
    Tag([u8; 16]),
}

/// One process's connection to the server.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Server>>);

impl Shared {
    fn server(&self) -> std::sync::MutexGuard<'_, Server> {
        self.0.lock().unwrap()
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> BackendFuture<'a, T> {
    Box::pin(std::future::ready(Ok(value)))
}

impl Store for Shared {
    fn find_local(&self, _key: &Key) -> Option<Found> {
        // Nothing is kept in process memory: every hit is a lookup.
        None
    }

    // No variants index: an answer that varies is stored under its
    // variant's key, and found only by a flight that knows it.
    fn find<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<Found>> {
        let found = self
            .server()
            .values
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(entry, _)| Found::Entry(entry.clone()));
        ready(found)
    }

    fn store<'a>(&'a self, key: &'a Key, entry: Entry, ttl: Duration) -> BackendFuture<'a, ()> {
        if !ttl.is_zero() {
            let until = Instant::now() + ttl;
            self.server().values.insert(key.clone(), (entry, until));
        }
        ready(())
    }
}

impl Leases for Shared {
    fn try_lock<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        lease: Duration,
        refresh: Option<SystemTime>,
    ) -> BackendFuture<'a, TryLock> {
        let mut server = self.server();
        let now = Instant::now();
        // A stored answer refuses the lease, unless it is the one the flight
        // means to refresh.
        let stored_other = |(entry, until): &(Entry, Instant)| {
            now < *until && (refresh.is_none() || entry.stored_at() != refresh)
        };
        let answer = if server.passes.get(key).is_some_and(|until| now < *until) {
            TryLock::Pass
        } else if server.values.get(key).is_some_and(stored_other)
            || server
                .leases
                .get(key)
                .is_some_and(|(_, until)| now < *until)
        {
            TryLock::Held
        } else {
            server
                .leases
                .insert(key.clone(), (token.clone(), now + lease));
            TryLock::Acquired
        };
        ready(answer)
    }

    fn renew<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        lease: Duration,
    ) -> BackendFuture<'a, bool> {
        let mut server = self.server();
        let renewed = match server.leases.get_mut(key) {
            Some((holder, until)) if holder == token => {
                *until = Instant::now() + lease;
                true
            }
            _ => false,
        };
        ready(renewed)
    }

    fn watch<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<Watch>> {
        let mut server = self.server();
        let announcer = server.announcers.entry(key.clone()).or_default();
        ready(Some(announcer.watch()))
    }

    fn complete<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        completion: Completion,
    ) -> BackendFuture<'a, Completed> {
        let mut server = self.server();
        if !server
            .leases
            .get(key)
            .is_some_and(|(holder, _)| holder == token)
        {
            return ready(Completed::Lost);
        }
        server.leases.remove(key);
        let notice = match completion {
            Completion::Stored { entry, ttl } => {
                let until = Instant::now() + ttl;
                server.values.insert(key.clone(), (entry, until));
                Notice::LookAgain
            }
            Completion::Shared(entry) => Notice::Answer(entry),
            Completion::Pass { ttl } => {
                if !ttl.is_zero() {
                    server.passes.insert(key.clone(), Instant::now() + ttl);
                }
                Notice::Pass
            }
            Completion::Released => Notice::LookAgain,
            _ => Notice::LookAgain,
        };
        if let Some(announcer) = server.announcers.get(key) {
            announcer.announce(notice);
        }
        ready(Completed::Done)
    }
}

/// Purges are recorded on the server, which every "process" reads: one
/// order, nobody to tell.
/// Answers are handed over whole, at completion: no streams.
impl Streams for Shared {
    fn open_stream<'a>(
        &'a self,
        _: &'a Key,
        _: &'a LeaseToken,
        _: &'a Entry,
        _: Duration,
    ) -> BackendFuture<'a, bool> {
        ready(false)
    }

    fn append_stream<'a>(
        &'a self,
        _: &'a Key,
        _: &'a LeaseToken,
        _: u64,
        _: bytes::Bytes,
        _: (Duration, usize),
    ) -> BackendFuture<'a, bool> {
        ready(false)
    }

    fn end_stream<'a>(
        &'a self,
        _: &'a Key,
        _: &'a LeaseToken,
        _: StreamEnd,
        _: Duration,
    ) -> BackendFuture<'a, ()> {
        ready(())
    }

    fn read_stream<'a>(
        &'a self,
        _: &'a Key,
        _: Option<&'a str>,
        _: u64,
        _: usize,
    ) -> BackendFuture<'a, Option<StreamRead>> {
        ready(None)
    }
}

impl Invalidation for Shared {
    fn purge<'a>(&'a self, purge: &'a Purge) -> BackendFuture<'a, Purged> {
        let mut server = self.server();
        server.purged_up_to += 1;
        let position = server.purged_up_to;
        let target = match purge {
            Purge::Key(key) => Target::Key(key.clone()),
            Purge::Resource(key) => Target::Resource(key.resource().to_vec()),
            Purge::Tag(tag) => Target::Tag(tag.digest()),
            _ => {
                return Box::pin(std::future::ready(Err(tower_coalesce::BackendError::msg(
                    "unknown purge",
                ))))
            }
        };
        server.purges.insert(target, position);
        ready(Purged::new(position, true))
    }

    fn purge_position(&self) -> tower_coalesce::PurgePosition {
        // One epoch: this server never loses its purge order.
        tower_coalesce::PurgePosition::new(0, self.server().purged_up_to)
    }

    fn purged(&self, key: &Key, entry: &Entry) -> Option<tower_coalesce::PurgePosition> {
        let server = self.server();
        let filled = entry.fill_position().position;
        let targets = [
            Target::Key(key.clone()),
            Target::Resource(key.resource().to_vec()),
        ]
        .into_iter()
        .chain(entry.tags().iter().map(|tag| Target::Tag(*tag)));
        targets
            .filter_map(|target| server.purges.get(&target).copied())
            .filter(|&at| at > filled)
            .max()
            .map(|at| tower_coalesce::PurgePosition::new(0, at))
    }
}

/// Two "processes": layers with flight tables of their own over one server,
/// in front of one origin that answers `status`.
fn two_instances(origin: &Origin, status: StatusCode) -> Vec<(CoalesceLayer, Svc)> {
    let server = Shared::default();
    (0..2)
        .map(|_| {
            let backend: Arc<dyn Backend> = Arc::new(server.clone());
            let layer = CoalesceLayer::new(
                CoalesceConfig::new()
                    .ttl(Duration::from_secs(60))
                    // Long: a waiter woken only by the lease running out
                    // would take this long.
                    .lease(Duration::from_secs(30))
                    .shared_backend(backend),
            );
            let answer = move |req: Request<Full<Bytes>>| async move {
                let mut res = Response::new(Full::new(Bytes::from(req.uri().path().to_owned())));
                *res.status_mut() = status;
                Ok::<_, BoxError>(res)
            };
            let svc = tower::util::BoxCloneService::new(layer.layer(origin.serve(answer)));
            (layer, svc)
        })
        .collect()
}

async fn burst_over_two(status: StatusCode) -> (Origin, Vec<Outcome>, Duration) {
    let origin = Origin::gated();
    let instances = two_instances(&origin, status);
    let start = Instant::now();
    let first = tokio::spawn(instances[0].1.clone().oneshot(get("/item")));
    until(&instances[0].0, "the first instance's call", |s| {
        s.origin_calls == 1
    })
    .await;
    let second = tokio::spawn(instances[1].1.clone().oneshot(get("/item")));
    until(&instances[1].0, "the second instance waiting", |s| {
        s.remote_waits == 1
    })
    .await;
    origin.open_gate();
    let mut outcomes = Vec::new();
    for call in [first, second] {
        let res = call.await.unwrap().unwrap();
        assert_eq!(res.status(), status);
        outcomes.push(*res.extensions().get::<Outcome>().unwrap());
        assert_eq!(body(res).await.unwrap(), "/item");
    }
    (origin, outcomes, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_written_from_the_docs_coalesces_across_instances() {
    let (origin, outcomes, took) = burst_over_two(StatusCode::OK).await;
    assert_eq!(origin.calls(), 1, "one origin call across both instances");
    assert_eq!(outcomes, [Outcome::Leader, Outcome::Follower]);
    assert!(
        took < Duration::from_secs(10),
        "woken by the announcement, not the lease: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unstored_answer_reaches_the_other_instance_through_the_announcement() {
    let (origin, outcomes, took) = burst_over_two(StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(origin.calls(), 1);
    assert_eq!(outcomes, [Outcome::Leader, Outcome::Follower]);
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_through_one_instance_is_followed_by_the_other() {
    let origin = Origin::open();
    let instances = two_instances(&origin, StatusCode::OK);
    let outcome = |res: &Response<_>| *res.extensions().get::<Outcome>().unwrap();
    let res = instances[0].1.clone().oneshot(get("/p")).await.unwrap();
    assert_eq!(outcome(&res), Outcome::Leader);
    let res = instances[1].1.clone().oneshot(get("/p")).await.unwrap();
    assert_eq!(outcome(&res), Outcome::Hit);

    let purged = instances[0].0.purger().purge_url("/p").await.unwrap();
    assert_eq!(purged.position, 1);
    // The other instance finds the stored answer purged and fetches anew.
    let res = instances[1].1.clone().oneshot(get("/p")).await.unwrap();
    assert_eq!(outcome(&res), Outcome::Leader);
    assert_eq!(origin.calls(), 2);
    let res = instances[0].1.clone().oneshot(get("/p")).await.unwrap();
    assert_eq!(outcome(&res), Outcome::Hit, "the new answer is stored");
}

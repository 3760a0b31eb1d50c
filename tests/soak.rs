//! Soak: a long random mix of keys, origin delays, origin failures (errors,
//! `500`s, bodies cut mid-stream) and callers that give up, on the memory
//! backend and on Redis shared by two instances. Afterwards nothing is left
//! under way, the counters add up, and every caller that waited got its own
//! key's answer or a failure it was entitled to — never another key's body.
//!
//! The run is seeded, so a failing mix can be replayed; the interleaving of
//! tasks still differs from run to run.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::redis::RedisServer;
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};
use tower_coalesce::{
    BoxError, CoalesceBody, CoalesceConfig, CoalesceLayer, FlightError, FlightErrorKind, HttpKey,
    KeyExtractor, MemoryBackend, Outcome, RedisBackend,
};

/// The two soaks measure the process's memory, so they run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// SplitMix64: a tiny seeded generator, plenty for choosing test inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Names key `k` inside answers and errors; the closing `>` keeps `<k1>`
/// from matching inside `<k12>`.
fn tag(k: u64) -> String {
    format!("<k{k}>")
}

fn path(k: u64) -> String {
    format!("/k/{k}")
}

/// The one right body for key `k`.
fn key_body(k: u64) -> Bytes {
    Bytes::from(tag(k).repeat(8))
}

type SoakBody = BoxBody<Bytes, BoxError>;
type SoakResponse = Response<CoalesceBody<SoakBody>>;

/// What the origin did, counted as it decided.
#[derive(Default, Debug)]
struct OriginTally {
    calls: AtomicU64,
    answers: AtomicU64,
    inner_errors: AtomicU64,
    server_errors: AtomicU64,
    body_errors: AtomicU64,
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::SeqCst)
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
}

/// The origin: waits 0–5 ms, then fails with its own error 5% of the time,
/// answers `500` 5%, cuts the body half-way 2%, and otherwise answers the
/// key's body. Each call's fate comes from the seed and the call's number.
fn origin(
    seed: u64,
    tally: Arc<OriginTally>,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<SoakBody>,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<Response<SoakBody>, BoxError>> + Send + 'static,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |req: Request<Empty<Bytes>>| {
        let n = tally.calls.fetch_add(1, Ordering::SeqCst);
        let fate = mix(seed ^ mix(n));
        let delay = Duration::from_millis(fate % 6);
        let roll = (fate >> 8) % 100;
        let k: u64 = req.uri().path()["/k/".len()..].parse().unwrap();
        let tally = tally.clone();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match roll {
                0..5 => {
                    bump(&tally.inner_errors);
                    Err(format!("inner error for {}", tag(k)).into())
                }
                5..10 => {
                    bump(&tally.server_errors);
                    let body = Full::new(Bytes::from(format!("500 for {}", tag(k))));
                    let mut res = Response::new(body.map_err(|e| match e {}).boxed());
                    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    Ok(res)
                }
                10..12 => {
                    bump(&tally.body_errors);
                    let whole = key_body(k);
                    let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
                        Ok(Frame::data(whole.slice(..whole.len() / 2))),
                        Err(format!("body cut for {}", tag(k)).into()),
                    ];
                    let body = StreamBody::new(futures_util::stream::iter(frames));
                    Ok(Response::new(body.boxed()))
                }
                _ => {
                    bump(&tally.answers);
                    let body = Full::new(key_body(k)).map_err(|e| match e {});
                    Ok(Response::new(body.boxed()))
                }
            }
        }
    })
}

/// What a caller that waited to the end received.
#[derive(Debug)]
enum Verdict {
    /// The key's whole body, with this outcome.
    Body(Option<Outcome>),
    /// The origin's `500` for this key.
    ServerError,
    /// A `502` made by the layer for a failed flight of this key.
    FlightFailed,
    /// The origin's own error for this key, to the flight's leader.
    LeaderError,
    /// Half the key's body, then the origin's body error, to the leader.
    LeaderBodyError,
}

/// What every caller received, counted.
#[derive(Default)]
struct ClientTally {
    sent: AtomicU64,
    cancelled: AtomicU64,
    bodies: AtomicU64,
    hits: AtomicU64,
    followers: AtomicU64,
    server_errors: AtomicU64,
    flight_failures: AtomicU64,
    leader_errors: AtomicU64,
    leader_body_errors: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl ClientTally {
    fn finished(&self) -> u64 {
        load(&self.cancelled)
            + load(&self.bodies)
            + load(&self.server_errors)
            + load(&self.flight_failures)
            + load(&self.leader_errors)
            + load(&self.leader_body_errors)
            + self.failures.lock().unwrap().len() as u64
    }

    fn report(&self) -> String {
        format!(
            "sent {}, cancelled {}, bodies {} (hits {}, followers {}), 500s {}, 502s {}, \
             leader errors {}, leader body errors {}, wrong {}",
            load(&self.sent),
            load(&self.cancelled),
            load(&self.bodies),
            load(&self.hits),
            load(&self.followers),
            load(&self.server_errors),
            load(&self.flight_failures),
            load(&self.leader_errors),
            load(&self.leader_body_errors),
            self.failures.lock().unwrap().len()
        )
    }

    fn assert_no_failures(&self) {
        let failures = self.failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "{} wrong answers, the first: {:#?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
    }
}

/// Reads a response to its end and judges it against key `k`.
async fn judge(res: Result<SoakResponse, BoxError>, k: u64) -> Result<Verdict, String> {
    let tag = tag(k);
    let res = match res {
        Ok(res) => res,
        Err(error) if error.to_string() == format!("inner error for {tag}") => {
            return Ok(Verdict::LeaderError)
        }
        Err(error) => return Err(format!("key {k}: the error {error:?}")),
    };
    let status = res.status();
    let outcome = res.extensions().get::<Outcome>().copied();
    let flight_error = res.extensions().get::<FlightError>().cloned();
    let mut body = res.into_body();
    let mut got = Vec::new();
    let mut cut = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    got.extend_from_slice(&data);
                }
            }
            Err(error) => {
                cut = Some(error.to_string());
                break;
            }
        }
    }
    let expected = key_body(k);
    let verdict = match (status.as_u16(), &cut) {
        (200, None) if got == expected => Some(Verdict::Body(outcome)),
        (200, Some(error))
            if outcome == Some(Outcome::Leader)
                && expected.starts_with(&got)
                && *error == format!("body cut for {tag}") =>
        {
            Some(Verdict::LeaderBodyError)
        }
        (500, None) if got == format!("500 for {tag}").as_bytes() => Some(Verdict::ServerError),
        (502, None)
            if got.is_empty()
                && outcome == Some(Outcome::Follower)
                && flight_error.as_ref().is_some_and(|e| {
                    matches!(e.kind(), FlightErrorKind::Origin | FlightErrorKind::Body)
                        && e.to_string().contains(&tag)
                }) =>
        {
            Some(Verdict::FlightFailed)
        }
        _ => None,
    };
    verdict.ok_or_else(|| {
        format!(
            "key {k}: status {status}, outcome {outcome:?}, body error {cut:?}, \
             flight error {flight_error:?}, body {:?}",
            String::from_utf8_lossy(&got[..got.len().min(120)])
        )
    })
}

/// One caller: sends its request, and either waits for the whole answer or
/// gives up after `cancel_after` (dropping the response future or body).
async fn one_caller<S>(mut svc: S, k: u64, cancel_after: Option<Duration>, tally: &ClientTally)
where
    S: Service<Request<Empty<Bytes>>, Response = SoakResponse, Error = BoxError>,
{
    let req = Request::get(path(k)).body(Empty::new()).unwrap();
    // Called before any timer starts, so every request is seen by the layer
    // even if its caller gives up at once.
    let ready = match svc.ready().await {
        Ok(ready) => ready,
        Err(error) => {
            let mut failures = tally.failures.lock().unwrap();
            failures.push(format!("key {k}: not ready: {error}"));
            return;
        }
    };
    let call = ready.call(req);
    let judged = async move { judge(call.await, k).await };
    let verdict = match cancel_after {
        Some(after) => match tokio::time::timeout(after, judged).await {
            Ok(verdict) => verdict,
            Err(_) => {
                bump(&tally.cancelled);
                return;
            }
        },
        None => judged.await,
    };
    match verdict {
        Ok(Verdict::Body(outcome)) => {
            bump(&tally.bodies);
            match outcome {
                Some(Outcome::Hit) => bump(&tally.hits),
                Some(Outcome::Follower) => bump(&tally.followers),
                _ => {}
            }
        }
        Ok(Verdict::ServerError) => bump(&tally.server_errors),
        Ok(Verdict::FlightFailed) => bump(&tally.flight_failures),
        Ok(Verdict::LeaderError) => bump(&tally.leader_errors),
        Ok(Verdict::LeaderBodyError) => bump(&tally.leader_body_errors),
        Err(wrong) => tally.failures.lock().unwrap().push(wrong),
    }
}

/// Sends `requests` requests over `keys` random keys, spread over `svcs`,
/// at most `in_flight` at a time; 5% of callers give up after 0–3 ms. Half
/// the requests go to the hottest 1% of the keys, so that requests meet in
/// flights and in the store, as traffic does; the rest spread over all keys.
async fn drive<S>(
    svcs: &[S],
    requests: usize,
    keys: u64,
    in_flight: usize,
    seed: u64,
    tally: &Arc<ClientTally>,
) where
    S: Service<Request<Empty<Bytes>>, Response = SoakResponse, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut rng = Rng(seed);
    for _ in 0..requests {
        let k = if rng.below(2) == 0 {
            rng.below((keys / 100).max(1))
        } else {
            rng.below(keys)
        };
        let svc = svcs[rng.below(svcs.len() as u64) as usize].clone();
        let cancel_after = (rng.below(100) < 5).then(|| Duration::from_micros(rng.below(3_000)));
        let slot = slots.clone().acquire_owned().await.unwrap();
        let tally = tally.clone();
        bump(&tally.sent);
        tokio::spawn(async move {
            one_caller(svc, k, cancel_after, &tally).await;
            drop(slot);
        });
    }
    // Every slot back: every caller has finished.
    let _all = slots.acquire_many(in_flight as u32).await.unwrap();
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// This process's resident memory, in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib / 1024.0
}

fn key(k: u64) -> tower_coalesce::Key {
    HttpKey::new()
        .extract(&Request::get(path(k)).body(Empty::<Bytes>::new()).unwrap())
        .unwrap()
}

#[test]
fn soak_memory_backend_200k_requests_over_10k_keys() {
    const REQUESTS: usize = 200_000;
    const KEYS: u64 = 10_000;
    const IN_FLIGHT: usize = 2_000;
    const SEED: u64 = 0x5eed_0001;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let rss_before = rss_mib();
        let store = MemoryBackend::new();
        let layer = CoalesceLayer::new(
            CoalesceConfig::new()
                .ttl(Duration::from_millis(100))
                .backend(store.clone()),
        );
        let origin_tally = Arc::new(OriginTally::default());
        let svc = layer.layer(origin(SEED, origin_tally.clone()));
        let tally = Arc::new(ClientTally::default());

        let start = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(120),
            drive(&[svc], REQUESTS, KEYS, IN_FLIGHT, SEED, &tally),
        )
        .await
        .expect("the soak did not finish within 120 s");
        let took = start.elapsed();
        // Flights whose callers all gave up still run to their end.
        eventually("flights to land", Duration::from_secs(10), || {
            layer.flights_in_progress() == 0
        })
        .await;

        let s = layer.stats();
        eprintln!("memory soak: {REQUESTS} requests in {took:?}");
        eprintln!("  callers: {}", tally.report());
        eprintln!("  origin: {origin_tally:?}");
        eprintln!("  layer: {s:?}");
        tally.assert_no_failures();
        assert_eq!(load(&tally.sent), REQUESTS as u64);
        assert_eq!(tally.finished(), REQUESTS as u64, "every caller finished");
        assert_eq!(s.requests, REQUESTS as u64);
        assert_eq!(s.origin_calls, load(&origin_tally.calls));
        // Each request was answered from the store, by a flight it followed,
        // or by its own origin call.
        assert_eq!(s.hits + s.followers + s.origin_calls, s.requests, "{s:?}");
        assert!(s.flights >= s.origin_calls);
        assert_eq!(
            s.errors,
            load(&origin_tally.inner_errors) + load(&origin_tally.body_errors)
        );
        assert_eq!(
            s.stored,
            load(&origin_tally.answers),
            "only whole 200s are stored"
        );
        assert_eq!(
            (s.bypasses, s.passes, s.passed_flights, s.panics, s.dangling),
            (0, 0, 0, 0, 0)
        );
        assert_eq!((s.wait_timeouts, s.cancelled, s.backend_errors), (0, 0, 0));
        assert!(load(&tally.hits) <= s.hits && load(&tally.followers) <= s.followers);
        assert!(
            load(&tally.leader_errors) <= load(&origin_tally.inner_errors)
                && load(&tally.leader_body_errors) <= load(&origin_tally.body_errors)
        );
        // Every kind of ending happened: the mix was exercised.
        for (what, n) in [
            ("hits", load(&tally.hits)),
            ("followers", load(&tally.followers)),
            ("cancellations", load(&tally.cancelled)),
            ("500s", load(&tally.server_errors)),
            ("502s", load(&tally.flight_failures)),
            ("leader errors", load(&tally.leader_errors)),
            ("leader body errors", load(&tally.leader_body_errors)),
        ] {
            assert!(n > 0, "no {what} in the whole run");
        }

        for k in 0..KEYS {
            store.invalidate(&key(k));
        }
        assert_eq!(store.entry_count(), 0);
        drop((layer, store));
        let rss_after = rss_mib();
        eprintln!("  RSS before {rss_before:.1} MiB, after (store emptied) {rss_after:.1} MiB");
        assert!(
            rss_after - rss_before < 200.0,
            "RSS grew from {rss_before:.1} MiB to {rss_after:.1} MiB"
        );
    });
}

#[test]
fn soak_redis_backend_20k_requests_over_two_instances() {
    const REQUESTS: usize = 20_000;
    const KEYS: u64 = 1_000;
    const IN_FLIGHT: usize = 500;
    const SEED: u64 = 0x5eed_0002;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = RedisServer::start();
    runtime().block_on(async {
        let rss_before = rss_mib();
        let origin_tally = Arc::new(OriginTally::default());
        let mut backends = Vec::new();
        let mut layers = Vec::new();
        let mut svcs = Vec::new();
        for _ in 0..2 {
            let backend = RedisBackend::connect(server.url()).await.unwrap();
            // A 1 s lease bounds how long a waiter can miss a completion
            // message (it looks again once per lease). Answers are kept
            // longer than on the memory backend: a waiter woken by a
            // completion must still find the answer after the queueing of a
            // loaded, unoptimised build.
            let layer = CoalesceLayer::new(
                CoalesceConfig::new()
                    .ttl(Duration::from_millis(500))
                    .lease(Duration::from_secs(1))
                    .backend(backend.clone()),
            );
            svcs.push(layer.layer(origin(SEED, origin_tally.clone())));
            backends.push(backend);
            layers.push(layer);
        }
        let tally = Arc::new(ClientTally::default());

        let start = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(120),
            drive(&svcs, REQUESTS, KEYS, IN_FLIGHT, SEED, &tally),
        )
        .await
        .expect("the soak did not finish within 120 s");
        let took = start.elapsed();
        eventually("flights to land", Duration::from_secs(10), || {
            layers.iter().all(|l| l.flights_in_progress() == 0)
        })
        .await;
        // Unsubscribing is left to spawned tasks: give them a moment.
        eventually(
            "every channel to be unsubscribed",
            Duration::from_secs(10),
            || backends.iter().all(|b| b.subscriptions() == 0),
        )
        .await;

        let stats: Vec<_> = layers.iter().map(|l| l.stats()).collect();
        eprintln!("redis soak: {REQUESTS} requests over 2 instances in {took:?}");
        eprintln!("  callers: {}", tally.report());
        eprintln!("  origin: {origin_tally:?}");
        for s in &stats {
            eprintln!("  layer: {s:?}");
        }
        tally.assert_no_failures();
        assert_eq!(tally.finished(), REQUESTS as u64, "every caller finished");
        let sum = |f: fn(&tower_coalesce::Stats) -> u64| stats.iter().map(f).sum::<u64>();
        assert_eq!(sum(|s| s.requests), REQUESTS as u64);
        assert_eq!(sum(|s| s.origin_calls), load(&origin_tally.calls));
        assert_eq!(
            sum(|s| s.errors),
            load(&origin_tally.inner_errors) + load(&origin_tally.body_errors)
        );
        assert!(sum(|s| s.stored) <= load(&origin_tally.answers));
        assert!(
            sum(|s| s.remote_waits) > 0,
            "the instances met on some keys"
        );
        for s in &stats {
            // Besides these, a flight may be answered by the other instance.
            assert!(s.hits + s.followers + s.origin_calls <= s.requests, "{s:?}");
            assert_eq!((s.bypasses, s.passes, s.panics, s.dangling), (0, 0, 0, 0));
            assert_eq!(s.wait_timeouts, 0, "no flight took 30 s: {s:?}");
        }

        // Nothing is left in Redis but answers: no subscriber on any
        // done channel (a process that watches no channel must not stay
        // subscribed), no lease held (a lease outlives its flight at most by
        // its own length, 1 s, if its release failed).
        let mut conn = server.conn();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut left: Vec<String>;
        loop {
            left = redis::cmd("PUBSUB")
                .arg("CHANNELS")
                .query(&mut conn)
                .unwrap();
            // The namespace's purge channel stays: every backend listens.
            left.retain(|name| !name.ends_with(":purges"));
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !left.is_empty() {
            let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
            let subscribed: Vec<&str> = clients
                .split_whitespace()
                .filter(|f| f.starts_with("sub=") && *f != "sub=0")
                .collect();
            panic!(
                "{} channels still subscribed in Redis 10 s after the run, with every \
                 backend's subscriptions() at 0 (connections: {subscribed:?}); e.g. {:?}",
                left.len(),
                &left[..left.len().min(3)],
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let locks: Vec<String> = redis::cmd("KEYS").arg("*:lock").query(&mut conn).unwrap();
            if locks.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "leases left behind: {locks:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
        drop((svcs, layers, backends));
        let rss_after = rss_mib();
        eprintln!("  RSS before {rss_before:.1} MiB, after {rss_after:.1} MiB");
        assert!(
            rss_after - rss_before < 200.0,
            "RSS grew from {rss_before:.1} MiB to {rss_after:.1} MiB"
        );
    });
}

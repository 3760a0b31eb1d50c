//! Redis and the instances sharing it failing under load, against a real
//! redis-server: Redis frozen mid-burst (SIGSTOP), Redis absent at start-up,
//! a lease attempt that arrives late and a connection that stalls (a leading
//! instance killed as a whole OS process is in the proxy's tests). No request may fail or hang, the
//! origin is called at most once per instance that lost Redis, coalescing
//! across instances comes back by itself, and Redis is left with no
//! subscription nobody watches.

mod support;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use std::process::Command;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::held::HeldLeaseAttempt;
use support::redis::{free_port, RedisServer};
use support::{body, echo_path, get, until, Origin, Svc};
use tokio::sync::Semaphore;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};
use tower_coalesce::{
    Backend, BoxError, CoalesceBody, CoalesceConfig, CoalesceLayer, Entry, HttpKey, Key,
    KeyExtractor, RedisBackend, Store,
};

/// A request under way: when it was answered, and with what.
type Answering = tokio::task::JoinHandle<(
    Instant,
    Result<Response<CoalesceBody<Full<Bytes>>>, BoxError>,
)>;

/// One instance: its own connection to Redis (as a separate process would
/// have), answers kept 60 s, the origin's answer delayed 200 ms after its gate
/// opens so that requests to other instances can meet a call under way.
async fn instance(
    backend: impl Backend,
    origin: &Origin,
    config: CoalesceConfig,
) -> (CoalesceLayer, Svc) {
    let layer = CoalesceLayer::new(config.ttl(Duration::from_secs(60)).backend(backend));
    let svc = layer.layer(origin.serve(|req| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        echo_path(req).await
    }));
    (layer, BoxCloneService::new(svc))
}

async fn redis_instance(
    url: &str,
    origin: &Origin,
    config: CoalesceConfig,
) -> (CoalesceLayer, Svc) {
    let backend = RedisBackend::connect(url).await.unwrap();
    instance(backend, origin, config).await
}

fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

/// A redis-server frozen by SIGSTOP: its connections stay open and its
/// commands go unanswered, as with a Redis stuck in a long command or a
/// network that drops packets. Resumed by SIGCONT when dropped, whatever
/// happens in the test.
struct Paused(u32);

impl Paused {
    fn new(server: &RedisServer) -> Self {
        assert!(send_signal(server.pid(), "STOP"), "kill -STOP failed");
        Paused(server.pid())
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        send_signal(self.0, "CONT");
    }
}

/// Waits (bounded) for every task: each must answer 200 with `path`.
/// Returns the latest time one of them answered.
async fn all_answer(tasks: Vec<Answering>, path: &str) -> Instant {
    let mut last = None::<Instant>;
    for task in tasks {
        let (at, res) = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("a request hung")
            .unwrap();
        let res = res.expect("no request fails");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body(res).await.unwrap(), path, "no request fails");
        last = Some(last.map_or(at, |l| l.max(at)));
    }
    last.expect("no tasks")
}

/// Starts `n` requests for `path` on `svc`; each task reports when it was answered.
fn spawn_requests(svc: &Svc, path: &str, n: usize) -> Vec<Answering> {
    (0..n)
        .map(|_| {
            let (svc, req) = (svc.clone(), get(path));
            tokio::spawn(async move {
                let res = svc.oneshot(req).await;
                (Instant::now(), res)
            })
        })
        .collect()
}

/// Sends bursts over both instances, each on a fresh key (the first instance
/// leads, the second joins while its call runs), until one costs a single
/// origin call: coalescing across instances works again. Returns how long
/// that took.
async fn until_coalescing_resumes(
    origin: &Origin,
    (a, svc_a): &(CoalesceLayer, Svc),
    (b, svc_b): &(CoalesceLayer, Svc),
    prefix: &str,
) -> Duration {
    let start = Instant::now();
    for round in 0.. {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "coalescing across instances never resumed: {:?} {:?}",
            a.stats(),
            b.stats()
        );
        let path = format!("{prefix}/{round}");
        let before = origin.calls();
        let mut tasks = spawn_requests(svc_a, &path, 10);
        let deadline = Instant::now() + Duration::from_secs(10);
        while origin.calls() == before {
            assert!(Instant::now() < deadline, "the first instance never called");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tasks.extend(spawn_requests(svc_b, &path, 10));
        all_answer(tasks, &path).await;
        if origin.calls() - before == 1 {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_mid_burst_fails_and_hangs_no_request_and_coalescing_resumes() {
    const BURST: usize = 400;
    let wait_timeout = Duration::from_secs(10);
    let server = RedisServer::start();
    let origin = Origin::gated();
    // A 1 s lease so the waiting instance looks again soon; the default
    // backend_timeout, 250 ms, bounds every Redis call.
    let config = || {
        CoalesceConfig::new()
            .lease(Duration::from_secs(1))
            .wait_timeout(wait_timeout)
    };
    let a = redis_instance(&server.url(), &origin, config()).await;
    let b = redis_instance(&server.url(), &origin, config()).await;

    // The burst gathers: one instance leads with the lease, the other waits
    // on it through Redis.
    let mut burst = spawn_requests(&a.1, "/frozen", BURST / 2);
    burst.extend(spawn_requests(&b.1, "/frozen", BURST / 2));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (sa, sb) = (a.0.stats(), b.0.stats());
        if sa.followers + sb.followers == (BURST - 2) as u64
            && sa.remote_waits + sb.remote_waits == 1
            && origin.calls() == 1
        {
            break;
        }
        assert!(Instant::now() < deadline, "burst never gathered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let paused = Paused::new(&server);
    let frozen_at = Instant::now();
    origin.open_gate();
    let last = all_answer(burst, "/frozen").await;
    let took = last - frozen_at;
    eprintln!(
        "burst with Redis frozen: answered within {took:?}, {} origin calls",
        origin.calls()
    );
    assert!(
        took < wait_timeout,
        "answered {took:?} after Redis froze; the wait timeout is {wait_timeout:?}"
    );
    assert!(
        origin.calls() <= 2,
        "at most one more call, by the waiting instance: {}",
        origin.calls()
    );
    assert!(a.0.stats().backend_errors + b.0.stats().backend_errors > 0);

    // A new burst while Redis stays frozen: each instance coalesces its own
    // requests, every Redis call gives up after backend_timeout.
    let before = origin.calls();
    let start = Instant::now();
    let mut burst = spawn_requests(&a.1, "/while-frozen", 50);
    burst.extend(spawn_requests(&b.1, "/while-frozen", 50));
    let took = all_answer(burst, "/while-frozen").await - start;
    eprintln!("burst on a new key while Redis is frozen: answered within {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "three bounded Redis calls and a 200 ms origin took {took:?}"
    );
    assert!(
        origin.calls() - before <= 2,
        "one call per instance at most: {}",
        origin.calls() - before
    );

    drop(paused);
    let took = until_coalescing_resumes(&origin, &a, &b, "/thawed").await;
    eprintln!("coalescing across instances resumed {took:?} after SIGCONT");
    // The key that was under way when Redis froze is answered again.
    for svc in [&a.1, &b.1] {
        let res = svc.clone().oneshot(get("/frozen")).await.unwrap();
        assert_eq!(body(res).await.unwrap(), "/frozen");
    }
    for (layer, _) in [&a, &b] {
        assert_eq!(layer.flights_in_progress(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refusing_connections_at_start_up_then_arriving_later() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let origin = Origin::gated();
    let a = redis_instance(&url, &origin, CoalesceConfig::new()).await;
    let b = redis_instance(&url, &origin, CoalesceConfig::new()).await;

    // Nothing listens: each instance coalesces its own requests.
    let start = Instant::now();
    let mut burst = spawn_requests(&a.1, "/cold", 50);
    burst.extend(spawn_requests(&b.1, "/cold", 50));
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.0.stats().followers + b.0.stats().followers != 98 || origin.calls() != 2 {
        assert!(
            Instant::now() < deadline,
            "burst never gathered: {} calls, {:?} {:?}",
            origin.calls(),
            a.0.stats(),
            b.0.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    origin.open_gate();
    let took = all_answer(burst, "/cold").await - start;
    eprintln!("burst with Redis refusing connections: answered within {took:?}");
    assert_eq!(origin.calls(), 2, "one call per instance");
    assert!(a.0.stats().backend_errors > 0 && b.0.stats().backend_errors > 0);

    // Redis arrives on that port: coalescing across instances begins.
    let _server = RedisServer::start_on(port);
    let took = until_coalescing_resumes(&origin, &a, &b, "/warm").await;
    eprintln!("coalescing across instances began {took:?} after Redis started");
    for (layer, _) in [&a, &b] {
        assert_eq!(layer.flights_in_progress(), 0);
    }
}

/// Subscribers Redis counts on `channel`.
fn subscribers(server: &RedisServer, channel: &str) -> u64 {
    let (_, n): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query(&mut server.conn())
        .unwrap();
    n
}

/// A waiting instance gives up its wait while its connection to Redis is
/// stalled (Redis frozen, the socket's buffers full): its `UNSUBSCRIBE`
/// times out before it is written, and the Redis client then drops it
/// unsent. Once Redis is back, Redis must not keep the process subscribed to
/// a channel it no longer watches: every later completion message on it
/// would be delivered to a process that ignores it, for as long as the
/// connection lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_lost_while_redis_stalls_does_not_leave_redis_subscribed() {
    let server = RedisServer::start();
    let origin = Origin::gated();
    let config = || {
        CoalesceConfig::new()
            .lease(Duration::from_secs(1))
            .wait_timeout(Duration::from_secs(10))
    };
    let a = redis_instance(&server.url(), &origin, config()).await;
    let waiting = RedisBackend::connect(server.url()).await.unwrap();
    let b = instance(waiting.clone(), &origin, config()).await;
    let key = HttpKey::new().extract(&get("/stalled")).unwrap();
    let channel = waiting.done_channel(&key);

    let mut burst = spawn_requests(&a.1, "/stalled", 1);
    until(&a.0, "the first instance's call", |_| origin.calls() == 1).await;
    burst.extend(spawn_requests(&b.1, "/stalled", 1));
    until(&b.0, "the remote wait", |s| s.remote_waits == 1).await;
    assert_eq!(subscribers(&server, &channel), 1);

    let paused = Paused::new(&server);
    // 16 MiB that a frozen Redis does not read: the waiting instance's
    // connection backs up behind it, so its next commands stay unwritten
    // until they time out.
    let filler = Entry::new(
        StatusCode::OK,
        http::Version::HTTP_11,
        http::HeaderMap::new(),
        Bytes::from(vec![b'f'; 16 << 20]),
        None,
    );
    let stuffing = tokio::spawn(async move {
        let _ = waiting
            .store(&Key::from("filler"), filler, Duration::from_secs(60))
            .await;
        waiting
    });
    // At its next look (one lease), the waiter finds Redis unanswering and
    // leads on its own; its watch ends and the unsubscribe is sent behind
    // the filler.
    origin.open_gate();
    all_answer(burst, "/stalled").await;
    let waiting = stuffing.await.unwrap();
    assert_eq!(waiting.subscriptions(), 0, "the process watches nothing");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(paused);

    let deadline = Instant::now() + Duration::from_secs(10);
    while subscribers(&server, &channel) != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        subscribers(&server, &channel),
        0,
        "Redis still has the process subscribed to {channel}, 10 s after Redis came \
         back, though it watches no channel: {:?}",
        b.0.stats()
    );
}

/// Another instance's flight completes (answer stored, lease freed) after
/// this instance found no answer and before its `SET NX` reaches Redis. The
/// `SET NX` then succeeds, but the answer is there: the request must get it,
/// not call the origin a second time. `hold` 1 is the first attempt (right
/// after the flight's lookup), 2 the first one of the wait loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_stored_just_before_a_lease_attempt_is_served_not_fetched_again() {
    let server = RedisServer::start();
    for hold in [1, 2] {
        let origin = Origin::gated();
        // Long bounds: the held attempt must not be given up.
        let config = || {
            CoalesceConfig::new()
                .backend_timeout(Duration::from_secs(5))
                .wait_timeout(Duration::from_secs(20))
        };
        let a = redis_instance(&server.url(), &origin, config()).await;
        let (reached, release) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
        let held = HeldLeaseAttempt {
            inner: RedisBackend::connect(server.url()).await.unwrap(),
            hold,
            reply_late: None,
            attempts: AtomicUsize::new(0),
            reached: reached.clone(),
            release: release.clone(),
        };
        let b = instance(held, &origin, config()).await;
        let path = format!("/race/{hold}");

        let first = spawn_requests(&a.1, &path, 1);
        until(&a.0, "the first instance's call", |_| origin.calls() == 1).await;
        let second = spawn_requests(&b.1, &path, 1);
        tokio::time::timeout(Duration::from_secs(20), reached.acquire())
            .await
            .expect("the second instance never tried the lease")
            .unwrap()
            .forget();
        // While the second instance's lease attempt is on its way, the first
        // completes: its answer is stored and its lease freed.
        origin.open_gate();
        all_answer(first, &path).await;
        release.add_permits(1);
        all_answer(second, &path).await;
        assert_eq!(
            origin.calls(),
            1,
            "attempt {hold}: the stored answer was fetched again: {:?}",
            b.0.stats()
        );
    }
}

/// The in-test upstream behind the proxies: counts calls and holds every
/// answer until its gate opens.
/// A stalled Redis costs the first flight its timeouts; the flights after it
/// skip Redis for the cool-down instead of each waiting on it, and Redis is
/// used again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_is_skipped_for_the_cooldown_then_used_again() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let (layer, svc) = redis_instance(
        &server.url(),
        &origin,
        CoalesceConfig::new()
            .backend_timeout(Duration::from_millis(100))
            .backend_cooldown(Duration::from_millis(1500)),
    )
    .await;
    let paused = Paused::new(&server);

    // Lookup, lease and store each wait the 100 ms timeout: three failures.
    let res = svc.clone().oneshot(get("/first")).await.unwrap();
    assert_eq!(body(res).await.unwrap(), "/first");
    let s = layer.stats();
    assert_eq!((s.backend_errors, s.backend_skipped), (3, 0), "{s:?}");

    // Now skipped: no operation waits, none fails.
    for i in 0..5 {
        let path = format!("/skipped/{i}");
        let res = svc.clone().oneshot(get(&path)).await.unwrap();
        assert_eq!(body(res).await.unwrap(), path);
    }
    let s = layer.stats();
    assert_eq!(s.backend_errors, 3, "{s:?}");
    assert_eq!(
        s.backend_skipped,
        5 * 3,
        "lookup, lease and store each: {s:?}"
    );
    assert_eq!(s.stored, 0);

    drop(paused);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let res = svc.clone().oneshot(get("/again")).await.unwrap();
    assert_eq!(body(res).await.unwrap(), "/again");
    let s = layer.stats();
    assert_eq!(
        s.stored, 1,
        "Redis is used again after the cool-down: {s:?}"
    );
    assert_eq!(origin.calls(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_cache_cut_off_from_redis_answers_only_within_its_trust() {
    const TRUST: Duration = Duration::from_millis(1500);
    let server = RedisServer::start();
    let origin = Origin::open();
    let backend = RedisBackend::builder(server.url())
        .near_cache_trust(TRUST)
        .connect()
        .await
        .unwrap();
    let (_layer, svc) = instance(backend, &origin, CoalesceConfig::new()).await;
    let ask = |svc: &Svc| {
        let svc = svc.clone();
        async move {
            let res = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(get("/n")))
                .await
                .expect("a request hung")
                .unwrap();
            let outcome = *res.extensions().get::<tower_coalesce::Outcome>().unwrap();
            assert_eq!(body(res).await.unwrap(), "/n", "no request fails");
            outcome
        }
    };
    assert_eq!(ask(&svc).await, tower_coalesce::Outcome::Leader);
    assert_eq!(ask(&svc).await, tower_coalesce::Outcome::Hit);

    let paused = Paused::new(&server);
    let stopped = Instant::now();
    // Heard from within the trust: the near cache still answers.
    assert_eq!(ask(&svc).await, tower_coalesce::Outcome::Hit);
    assert_eq!(origin.calls(), 1);
    // The connection was last seen alive at most a heartbeat (1 s) before
    // the pause: past that and the trust, nothing is served from memory.
    tokio::time::sleep(TRUST + Duration::from_millis(1100) - stopped.elapsed()).await;
    assert_ne!(ask(&svc).await, tower_coalesce::Outcome::Hit);
    assert_eq!(origin.calls(), 2, "the answer came from the origin");
    drop(paused);
    // Redis back: hits again, once the backend is tried again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ask(&svc).await != tower_coalesce::Outcome::Hit {
        assert!(Instant::now() < deadline, "the near cache never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_went_away_fails_fast_instead_of_timing_out() {
    let server = RedisServer::start();
    let origin = Origin::open();
    // A backend_timeout long enough that a request which waited it out, even
    // once, shows: the origin takes 200 ms.
    let config = CoalesceConfig::new().backend_timeout(Duration::from_secs(2));
    let (layer, svc) = redis_instance(&server.url(), &origin, config).await;
    let res = svc.clone().oneshot(get("/warm")).await.unwrap();
    assert_eq!(body(res).await.unwrap(), "/warm");

    // Killed: its connection closes, and new ones are refused.
    drop(server);
    for i in 0..5 {
        let path = format!("/gone/{i}");
        let start = Instant::now();
        let res = tokio::time::timeout(Duration::from_secs(20), svc.clone().oneshot(get(&path)))
            .await
            .expect("a request hung")
            .unwrap();
        assert_eq!(body(res).await.unwrap(), path.as_str(), "no request fails");
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "request {i} took {took:?}: it waited for a Redis that is gone"
        );
    }
    assert!(layer.stats().backend_errors > 0);
}

/// A lease attempt that ran in Redis but whose reply came after
/// `backend_timeout`: the flight goes on as if it had no lease, yet the
/// lease is its own. It must end it with its answer, as a leader does (the
/// answer stored and announced): another instance waiting on that lease is
/// answered at once, not at its next look a lease later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_reply_came_too_late_is_still_completed_by_its_flight() {
    let server = RedisServer::start();
    let origin = Origin::gated();
    let config = || {
        CoalesceConfig::new()
            .backend_timeout(Duration::from_millis(200))
            .lease(Duration::from_secs(10))
            .wait_timeout(Duration::from_secs(30))
    };
    let (reached, release) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    let late = HeldLeaseAttempt {
        inner: RedisBackend::connect(server.url()).await.unwrap(),
        hold: 1,
        reply_late: Some(Duration::from_millis(400)),
        attempts: AtomicUsize::new(0),
        reached: reached.clone(),
        release,
    };
    let a = instance(late, &origin, config()).await;
    let b = redis_instance(&server.url(), &origin, config()).await;

    let first = spawn_requests(&a.1, "/late", 1);
    tokio::time::timeout(Duration::from_secs(10), reached.acquire())
        .await
        .expect("the lease was never tried")
        .unwrap()
        .forget();
    // The lease is held in Redis; the second instance waits on it.
    let second = spawn_requests(&b.1, "/late", 1);
    until(&b.0, "the remote wait", |s| s.remote_waits == 1).await;
    until(&a.0, "the lease-less origin call", |_| origin.calls() == 1).await;
    origin.open_gate();
    let answered = all_answer(first, "/late").await;
    let waited = all_answer(second, "/late").await;
    assert_eq!(origin.calls(), 1, "{:?}", b.0.stats());
    let after = waited.saturating_duration_since(answered);
    assert!(
        after < Duration::from_secs(3),
        "the waiting instance was answered {after:?} after the first: it waited for the lease to end"
    );
}

//! Single-flight across instances sharing a real redis-server. Each instance
//! is a layer with its own `RedisBackend` (its own connection), as separate
//! processes would have.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::redis::RedisServer;
use support::{body, echo_path, get, until, Origin, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer, Outcome, RedisBackend};

async fn instance(
    server: &RedisServer,
    origin: &Origin,
    config: CoalesceConfig,
) -> (CoalesceLayer, Svc) {
    let backend = RedisBackend::connect(server.url()).await.unwrap();
    let layer = CoalesceLayer::new(config.ttl(Duration::from_secs(60)).backend(backend));
    let svc = tower::util::BoxCloneService::new(layer.layer(origin.serve(echo_path)));
    (layer, svc)
}

/// Redis commands counted since the last `CONFIG RESETSTAT`, less the test's own.
fn commands(server: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.conn())
        .unwrap();
    support::redis::command_calls(&info, &["info", "config"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_over_four_instances_make_one_origin_call_and_few_redis_commands() {
    const INSTANCES: usize = 4;
    const PER_INSTANCE: usize = 2_500;
    let server = RedisServer::start();
    let origin = Origin::gated();
    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        instances.push(instance(&server, &origin, CoalesceConfig::new()).await);
    }
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut server.conn())
        .unwrap();

    let mut tasks = Vec::new();
    for i in 0..PER_INSTANCE * INSTANCES {
        let svc = instances[i % INSTANCES].1.clone();
        tasks.push(tokio::spawn(svc.oneshot(get("/products/7"))));
    }
    let followers = |(layer, _): &(CoalesceLayer, Svc)| layer.stats().followers;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let gathered: u64 = instances.iter().map(followers).sum();
        let waiting: u64 = instances.iter().map(|(l, _)| l.stats().remote_waits).sum();
        if gathered == ((PER_INSTANCE - 1) * INSTANCES) as u64
            && waiting == (INSTANCES - 1) as u64
            && origin.calls() == 1
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "burst never gathered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    origin.open_gate();

    let mut outcomes = std::collections::HashMap::new();
    for t in tasks {
        let res = t.await.unwrap().unwrap();
        *outcomes
            .entry(*res.extensions().get::<Outcome>().unwrap())
            .or_insert(0) += 1;
        assert_eq!(body(res).await.unwrap(), "/products/7");
    }
    assert_eq!(origin.calls(), 1, "one origin call across every instance");
    assert_eq!(outcomes[&Outcome::Leader], 1);
    let used = commands(&server);
    assert!(
        used <= 20 * INSTANCES as u64,
        "{used} Redis commands for the burst"
    );
    println!(
        "burst of {} requests over {INSTANCES} instances: {used} Redis commands",
        PER_INSTANCE * INSTANCES
    );
    for (layer, _) in &instances {
        assert_eq!(layer.flights_in_progress(), 0);
        assert_eq!(layer.stats().backend_errors, 0);
    }
}

#[tokio::test]
async fn an_origin_slower_than_three_leases_keeps_its_lease() {
    let server = RedisServer::start();
    let origin = Origin::gated();
    let config = || {
        CoalesceConfig::new()
            .lease(Duration::from_millis(150))
            .backend_timeout(Duration::from_millis(50))
    };
    let (a, svc_a) = instance(&server, &origin, config()).await;
    let (b, svc_b) = instance(&server, &origin, config()).await;
    let first = tokio::spawn(svc_a.oneshot(get("/slow")));
    until(&a, "the leader's call", |_| origin.calls() == 1).await;
    let second = tokio::spawn(svc_b.oneshot(get("/slow")));
    until(&b, "the remote wait", |s| s.remote_waits == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    origin.open_gate();
    assert_eq!(body(first.await.unwrap().unwrap()).await.unwrap(), "/slow");
    assert_eq!(body(second.await.unwrap().unwrap()).await.unwrap(), "/slow");
    assert_eq!(
        origin.calls(),
        1,
        "renewed at lease/3, the lease outlived the call"
    );
    assert_eq!(a.stats().lease_lost, 0);
    assert_eq!(b.stats().takeovers, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leader_instance_is_taken_over_after_its_lease() {
    let server = RedisServer::start();
    let origin = Origin::gated();
    let lease = Duration::from_millis(400);
    let url = server.url();
    // The leader instance lives on a runtime of its own, so that it can die
    // the way a process does: its tasks and connections gone, nothing released.
    let (crash_tx, crash_rx) = std::sync::mpsc::channel::<()>();
    let (led_tx, led_rx) = std::sync::mpsc::channel::<()>();
    let origin_a = origin.clone();
    let doomed = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let backend = RedisBackend::connect(url).await.unwrap();
            let config = CoalesceConfig::new()
                .ttl(Duration::from_secs(60))
                .lease(lease)
                .backend(backend);
            let layer = CoalesceLayer::new(config);
            let svc = layer.layer(origin_a.serve(echo_path));
            tokio::spawn(svc.oneshot(get("/k")));
            while origin_a.calls() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            led_tx.send(()).unwrap();
        });
        crash_rx.recv().unwrap();
        rt.shutdown_background();
    });
    led_rx.recv().unwrap();

    let (b, svc_b) = instance(&server, &origin, CoalesceConfig::new().lease(lease)).await;
    let waiters: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc_b.clone().oneshot(get("/k"))))
        .collect();
    until(&b, "the remote wait", |s| s.remote_waits == 1).await;
    crash_tx.send(()).unwrap();
    doomed.join().unwrap();
    origin.open_gate();

    for w in waiters {
        let res = w.await.unwrap().unwrap();
        assert_eq!(body(res).await.unwrap(), "/k", "no request fails");
    }
    assert_eq!(b.stats().takeovers, 1);
    assert_eq!(
        origin.calls(),
        2,
        "the dead leader's call, and the one that took over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_instance_is_answered_soon_after_the_leader_completes() {
    let server = RedisServer::start();
    let returned = Arc::new(Mutex::new(None::<Instant>));
    let origin = Origin::gated();
    let r = returned.clone();
    let served = origin.serve(move |req| {
        let r = r.clone();
        async move {
            let res = echo_path(req).await;
            *r.lock().unwrap() = Some(Instant::now());
            res
        }
    });
    let mut layers = Vec::new();
    let mut svcs = Vec::new();
    for _ in 0..2 {
        let backend = RedisBackend::connect(server.url()).await.unwrap();
        let layer = CoalesceLayer::new(
            CoalesceConfig::new()
                .ttl(Duration::from_secs(60))
                .backend(backend),
        );
        svcs.push(layer.layer(served.clone()));
        layers.push(layer);
    }
    let leader = tokio::spawn(svcs[0].clone().oneshot(get("/fast")));
    until(&layers[0], "the leader's call", |_| origin.calls() == 1).await;
    let remote = tokio::spawn({
        let svc = svcs[1].clone();
        async move {
            let res = svc.oneshot(get("/fast")).await.unwrap();
            (Instant::now(), res)
        }
    });
    until(&layers[1], "the remote wait", |s| s.remote_waits == 1).await;
    origin.open_gate();
    leader.await.unwrap().unwrap();
    let (answered, res) = remote.await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Follower));
    let latency = answered.duration_since(returned.lock().unwrap().unwrap());
    println!("cross-instance wake-up: {latency:?}");
    assert!(
        latency < Duration::from_millis(100),
        "woken by a message, not a timer: {latency:?}"
    );
    assert_eq!(origin.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_burst_fails_no_request_and_coalescing_resumes_after_restart() {
    let server = RedisServer::start();
    let port = server.port;
    let origin = Origin::gated();
    let config = || CoalesceConfig::new().backend_timeout(Duration::from_millis(200));
    let (a, svc_a) = instance(&server, &origin, config()).await;
    let (b, svc_b) = instance(&server, &origin, config()).await;

    let mut burst = Vec::new();
    for i in 0..400 {
        let svc = if i % 2 == 0 {
            svc_a.clone()
        } else {
            svc_b.clone()
        };
        burst.push(tokio::spawn(svc.oneshot(get("/during"))));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // Every request joined: a flight on each instance, one of them waiting
    // on the other's lease.
    while a.stats().remote_waits + b.stats().remote_waits != 1
        || a.stats().followers + b.stats().followers != 398
        || origin.calls() != 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "burst never gathered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(server);
    let killed = Instant::now();
    origin.open_gate();
    for t in burst {
        let res = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("no request hangs")
            .unwrap()
            .unwrap();
        assert_eq!(body(res).await.unwrap(), "/during", "no request fails");
    }
    // A closed connection fails at once: the burst waits out at most one
    // `backend_timeout` (200 ms) beyond the origin's answer (at once here),
    // not one per backend operation. Generous for a loaded machine.
    let took = killed.elapsed();
    println!("every request answered {took:?} after Redis was killed");
    assert!(
        took < Duration::from_millis(200 + 1_000),
        "the burst took {took:?} to answer after Redis was killed"
    );
    assert!(
        origin.calls() <= 2,
        "at most one more call, from the waiting instance: {}",
        origin.calls()
    );
    assert!(a.stats().backend_errors + b.stats().backend_errors > 0);

    // Redis returns: a new burst across both instances makes one origin call again.
    let _server = RedisServer::start_on(port);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for round in 0.. {
        assert!(
            tokio::time::Instant::now() < deadline,
            "coalescing never resumed"
        );
        let path = format!("/after/{round}");
        let before = origin.calls();
        let first = tokio::spawn(svc_a.clone().oneshot(get(&path)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = tokio::spawn(svc_b.clone().oneshot(get(&path)));
        let (x, y) = (
            first.await.unwrap().unwrap(),
            second.await.unwrap().unwrap(),
        );
        assert_eq!(body(x).await.unwrap(), path);
        assert_eq!(body(y).await.unwrap(), path);
        if origin.calls() - before == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_remote_wait_ends_at_the_wait_timeout_with_the_fallback() {
    let server = RedisServer::start();
    let origin = Origin::gated();
    let (a, svc_a) = instance(&server, &origin, CoalesceConfig::new()).await;
    let config = CoalesceConfig::new().wait_timeout(Duration::from_millis(200));
    let (b, svc_b) = instance(&server, &origin, config).await;
    let _stuck = tokio::spawn(svc_a.oneshot(get("/stuck")));
    until(&a, "the leader's call", |_| origin.calls() == 1).await;
    let res = svc_b.oneshot(get("/stuck")).await.unwrap();
    assert_eq!(res.status(), http::StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(b.stats().wait_timeouts, 1);
    assert_eq!(
        origin.calls(),
        1,
        "the default fallback adds no load to a slow origin"
    );
}

#[tokio::test]
async fn a_leader_that_lost_its_lease_leaves_its_successor_alone() {
    let server = RedisServer::start();
    let origin = Origin::gated();
    let config = CoalesceConfig::new()
        .lease(Duration::from_millis(300))
        .backend_timeout(Duration::from_millis(100));
    let (a, svc_a) = instance(&server, &origin, config).await;
    let first = tokio::spawn(svc_a.oneshot(get("/stale")));
    until(&a, "the leader's call", |_| origin.calls() == 1).await;

    // The lease ends under it (as after a long pause) and another instance's
    // leader takes it.
    let backend = RedisBackend::connect(server.url()).await.unwrap();
    let key =
        tower_coalesce::KeyExtractor::extract(&tower_coalesce::HttpKey::new(), &get("/stale"))
            .unwrap();
    let lock = backend.lock_key(&key);
    let mut conn = server.conn();
    let _: () = redis::cmd("SET")
        .arg(&lock)
        .arg("successor-token")
        .arg("PX")
        .arg(60_000)
        .query(&mut conn)
        .unwrap();
    // The watchdog's next renewal finds the lease gone.
    until(&a, "the watchdog to see the loss", |s| s.lease_lost == 1).await;

    origin.open_gate();
    let res = first.await.unwrap().unwrap();
    assert_eq!(
        body(res).await.unwrap(),
        "/stale",
        "its own callers still get the answer"
    );
    assert_eq!(
        a.stats().lease_lost,
        1,
        "one lost lease, counted once though the completion was refused too: {:?}",
        a.stats()
    );
    assert_eq!(a.stats().stored, 0);
    let holder: String = redis::cmd("GET").arg(&lock).query(&mut conn).unwrap();
    assert_eq!(holder, "successor-token", "the successor's lock is intact");
    let value: Option<Vec<u8>> = redis::cmd("GET")
        .arg(backend.value_key(&key))
        .query(&mut conn)
        .unwrap();
    assert!(value.is_none(), "the late leader wrote no value");
}

#[tokio::test]
async fn a_leader_that_times_out_releases_its_lease_for_the_next_instance_at_once() {
    let server = RedisServer::start();
    let stuck = Origin::gated();
    let healthy = Origin::open();
    let lease = Duration::from_secs(10);
    let quick = CoalesceConfig::new()
        .lease(lease)
        .wait_timeout(Duration::from_millis(300));
    let (a, svc_a) = instance(&server, &stuck, quick).await;
    let (b, svc_b) = instance(&server, &healthy, CoalesceConfig::new().lease(lease)).await;
    let timed_out = tokio::spawn(svc_a.oneshot(get("/stuck")));
    until(&a, "the leader's call", |_| stuck.calls() == 1).await;

    let start = Instant::now();
    let res = svc_b.oneshot(get("/stuck")).await.unwrap();
    let waited = start.elapsed();
    assert_eq!(res.status(), http::StatusCode::OK);
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Leader));
    assert_eq!(b.stats().takeovers, 1);
    assert!(
        waited < lease / 2,
        "taken over after {waited:?}: the released lease must not be waited out"
    );
    let res = timed_out.await.unwrap().unwrap();
    assert_eq!(res.status(), http::StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(healthy.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_read_back_from_redis_carries_its_age() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let (_a, first) = instance(&server, &origin, CoalesceConfig::new()).await;
    let (_b, second) = instance(&server, &origin, CoalesceConfig::new()).await;
    let res = first.oneshot(get("/aged")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Leader));
    assert_eq!(support::age(&res), None);
    // Read from Redis by the second instance, then from its near cache.
    for _ in 0..2 {
        let res = second.clone().oneshot(get("/aged")).await.unwrap();
        assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Hit));
        let age = support::age(&res).expect("an Age header");
        assert!(age <= 1, "age {age}");
        assert_eq!(body(res).await.unwrap(), "/aged");
    }
    assert_eq!(origin.calls(), 1);
}

/// An instance whose wait on another's lease times out with `CallOrigin`:
/// its leader calls the origin, and its followers make one new flight, not
/// a call each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_origin_followers_of_a_timed_out_remote_wait_make_one_new_flight() {
    let server = RedisServer::start();
    let origin = Origin::gated();
    let (_a, svc_a) = instance(&server, &origin, CoalesceConfig::new()).await;
    let (_b, svc_b) = instance(
        &server,
        &origin,
        CoalesceConfig::new()
            .wait_timeout(Duration::from_millis(300))
            .wait_fallback(tower_coalesce::WaitFallback::CallOrigin),
    )
    .await;
    support::overdue_followers_make_one_flight(&origin, svc_a, svc_b).await;
}

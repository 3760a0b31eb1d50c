//! Single-flight across instances sharing a real Redis Cluster (three
//! masters, a replica each, on loopback). Each instance is a layer with its
//! own `RedisBackend` on the cluster, as separate processes would have.
//!
//! One cluster serves every case here, one case at a time: a loaded
//! two-core machine running several clusters at once would fail nodes over
//! by itself. Cases that break the cluster have clusters of their own.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;
use support::redis::RedisCluster;
use support::{body, echo_path, get, Origin, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer, HttpKey, KeyExtractor, Outcome, RedisBackend};

async fn instance(nodes: &[String], origin: &Origin) -> (CoalesceLayer, Svc, RedisBackend) {
    let backend = RedisBackend::connect_cluster(nodes.to_vec()).await.unwrap();
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .backend(backend.clone()),
    );
    let svc = tower::util::BoxCloneService::new(layer.layer(origin.serve(echo_path)));
    (layer, svc, backend)
}

/// Commands the masters ran, less the test's own inspection and the
/// client's topology checks (not the burst's).
fn burst_commands(cluster: &RedisCluster) -> u64 {
    cluster.master_commands(&["info", "config", "cluster", "ping"])
}

/// `n` requests for `path` spread over `instances`, once their leader's
/// origin call is held: waits until every request has joined a flight,
/// opens the gate, and returns each answer's outcome (every body checked).
async fn burst(
    instances: &[(CoalesceLayer, Svc, RedisBackend)],
    origin: &Origin,
    paths: &[String],
    per_path: usize,
) -> HashMap<Outcome, usize> {
    let mut tasks = Vec::new();
    for path in paths {
        for i in 0..per_path {
            let svc = instances[i % instances.len()].1.clone();
            let path = path.clone();
            tasks.push(tokio::spawn(async move {
                let res = svc.oneshot(get(&path)).await.unwrap();
                let outcome = *res.extensions().get::<Outcome>().unwrap();
                assert_eq!(body(res).await.unwrap(), path.as_str());
                outcome
            }));
        }
    }
    let joined = |expected: u64| {
        instances
            .iter()
            .map(|(l, ..)| l.stats().followers + l.stats().remote_waits)
            .sum::<u64>()
            >= expected
    };
    let expected =
        (paths.len() * (per_path - instances.len()) + paths.len() * (instances.len() - 1)) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(joined(expected) && origin.calls() >= paths.len()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst never gathered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    origin.open_gate();
    let mut outcomes = HashMap::new();
    for task in tasks {
        let outcome = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a request hung")
            .unwrap();
        *outcomes.entry(outcome).or_insert(0) += 1;
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster() {
    let cluster = RedisCluster::start();
    let nodes = cluster.urls();
    slots_are_the_clusters(&cluster).await;
    one_burst_over_four_instances_makes_one_origin_call(&cluster, &nodes).await;
    keys_on_every_master_make_one_origin_call_each(&cluster, &nodes).await;
    purges_reach_every_instance(&nodes).await;
    an_answer_stored_without_a_lease_is_announced(&nodes).await;
    call_origin_followers_make_one_new_flight(&nodes).await;
    a_lease_whose_reply_came_too_late_is_completed_by_its_flight(&nodes).await;
    an_unreachable_seed_is_skipped_and_no_seed_leaves_the_layer_local(&cluster).await;
}

/// Every name of a key shares its slot, which the cluster agrees with.
async fn slots_are_the_clusters(cluster: &RedisCluster) {
    let backend = RedisBackend::connect_cluster(cluster.urls()).await.unwrap();
    let key = HttpKey::new().extract(&get("/slot")).unwrap();
    let slots: HashSet<u16> = [
        backend.value_key(&key),
        backend.lock_key(&key),
        backend.pass_key(&key),
        backend.done_channel(&key),
    ]
    .iter()
    .map(|name| cluster.slot_of(name))
    .collect();
    assert_eq!(slots.len(), 1, "a key's names are on one slot");

    // The scripts the bursts below do not run, run on the cluster too: a
    // lease-less store (`STORE`) and a bad value's removal (`DROP_BAD`).
    use tower_coalesce::Store;
    let entry = tower_coalesce::Entry::new(
        http::StatusCode::OK,
        http::Version::HTTP_11,
        http::HeaderMap::new(),
        bytes::Bytes::from_static(b"stored"),
        None,
    );
    backend
        .store(&key, entry, Duration::from_secs(60))
        .await
        .unwrap();
    let reader = RedisBackend::connect_cluster(cluster.urls()).await.unwrap();
    assert_eq!(reader.lookup(&key).await.unwrap().unwrap().body(), "stored");
    let bad = HttpKey::new().extract(&get("/bad")).unwrap();
    let mut conn = redis::cluster::ClusterClient::new(cluster.urls())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(reader.value_key(&bad))
        .arg("not an entry")
        .query(&mut conn)
        .unwrap();
    assert!(reader.lookup(&bad).await.unwrap().is_none());
    let left: bool = redis::cmd("EXISTS")
        .arg(reader.value_key(&bad))
        .query(&mut conn)
        .unwrap();
    assert!(!left, "the bad value was deleted");
}

async fn one_burst_over_four_instances_makes_one_origin_call(
    cluster: &RedisCluster,
    nodes: &[String],
) {
    const INSTANCES: usize = 4;
    let origin = Origin::gated();
    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        instances.push(instance(nodes, &origin).await);
    }
    cluster.reset_stats();
    let outcomes = burst(&instances, &origin, &["/products/7".to_owned()], 2_000).await;
    assert_eq!(origin.calls(), 1, "one origin call across every instance");
    assert_eq!(outcomes[&Outcome::Leader], 1);
    let used = burst_commands(cluster);
    println!("burst of 2,000 requests over {INSTANCES} instances on a cluster: {used} commands on the masters");
    assert!(
        used <= 20 * INSTANCES as u64,
        "{used} Redis commands for the burst"
    );
    for (layer, ..) in &instances {
        assert_eq!(layer.flights_in_progress(), 0);
        assert_eq!(layer.stats().backend_errors, 0);
    }
}

async fn keys_on_every_master_make_one_origin_call_each(cluster: &RedisCluster, nodes: &[String]) {
    let origin = Origin::gated();
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(instance(nodes, &origin).await);
    }
    // Paths until every master serves at least two of them.
    let backend = &instances[0].2;
    let mut paths = Vec::new();
    let mut per_master: HashMap<u16, usize> = HashMap::new();
    for i in 0.. {
        let path = format!("/spread/{i}");
        let key = HttpKey::new().extract(&get(&path)).unwrap();
        let master = cluster
            .master_of(cluster.slot_of(&backend.value_key(&key)))
            .expect("every slot is served")
            .port;
        let count = per_master.entry(master).or_default();
        if *count < 2 {
            *count += 1;
            paths.push(path);
        }
        if per_master.len() == 3 && per_master.values().all(|n| *n == 2) {
            break;
        }
    }
    let outcomes = burst(&instances, &origin, &paths, 30).await;
    assert_eq!(origin.calls(), paths.len(), "one origin call per key");
    assert_eq!(outcomes[&Outcome::Leader], paths.len());
    for (layer, ..) in &instances {
        assert_eq!(layer.stats().backend_errors, 0);
    }
}

async fn purges_reach_every_instance(nodes: &[String]) {
    let origin = Origin::open();
    let mut instances = Vec::new();
    for _ in 0..3 {
        let backend = RedisBackend::connect_cluster(nodes.to_vec()).await.unwrap();
        let layer = CoalesceLayer::new(
            CoalesceConfig::new()
                .ttl(Duration::from_secs(60))
                .backend(backend),
        );
        // Answers `<n>`: which origin call made it.
        let calls = origin.calls.clone();
        let svc = layer.layer(origin.serve(move |_| {
            let n = calls.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                Ok(http::Response::new(http_body_util::Full::new(
                    n.to_string().into(),
                )))
            }
        }));
        instances.push((layer, tower::util::BoxCloneService::new(svc)));
    }
    let answer = |svc: &Svc| {
        let svc = svc.clone();
        async move {
            let res = svc.oneshot(get("/purged")).await.unwrap();
            String::from_utf8(body(res).await.unwrap().to_vec()).unwrap()
        }
    };
    assert_eq!(answer(&instances[0].1).await, "1");
    for (_, svc) in &instances[1..] {
        // Read from Redis, then from each instance's near cache.
        assert_eq!(answer(svc).await, "1");
        assert_eq!(answer(svc).await, "1");
    }
    let purged = instances[0].0.purger().purge_url("/purged").await.unwrap();
    assert!(purged.shared);
    for (_, svc) in &instances[1..] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while answer(svc).await == "1" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "an instance still served a purged answer a second later"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    assert_eq!(origin.calls(), 2, "one new fill for all three");
}

async fn an_unreachable_seed_is_skipped_and_no_seed_leaves_the_layer_local(cluster: &RedisCluster) {
    let dead = format!("redis://127.0.0.1:{}/", support::redis::free_port());
    // One seed down, one up: the cluster is found through the live one.
    let origin = Origin::open();
    let mut nodes = vec![dead.clone()];
    nodes.push(cluster.urls()[0].clone());
    let (layer, svc, _) = instance(&nodes, &origin).await;
    let res = svc.clone().oneshot(get("/seeded")).await.unwrap();
    assert_eq!(body(res).await.unwrap(), "/seeded");
    let res = svc.clone().oneshot(get("/seeded")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Hit));
    assert_eq!(layer.stats().backend_errors, 0);

    // No seed answers: requests still succeed, coalesced in the process.
    let origin = Origin::gated();
    let (layer, svc, _) = instance(&[dead], &origin).await;
    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/alone"))))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while layer.stats().followers < 19 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst never gathered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    origin.open_gate();
    for task in tasks {
        let res = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("a request hung")
            .unwrap()
            .unwrap();
        assert_eq!(body(res).await.unwrap(), "/alone");
    }
    assert_eq!(origin.calls(), 1);
}

/// As on one server: a lease-less store reaches the instances waiting on
/// the key at once, with the answer.
async fn an_answer_stored_without_a_lease_is_announced(nodes: &[String]) {
    use tower_coalesce::{Leases, Store};
    let writer = RedisBackend::connect_cluster(nodes.to_vec()).await.unwrap();
    let waiter = RedisBackend::connect_cluster(nodes.to_vec()).await.unwrap();
    let key = HttpKey::new().extract(&get("/unleased")).unwrap();
    let mut watch = waiter.watch(&key).await.unwrap().unwrap();
    let entry = tower_coalesce::Entry::new(
        http::StatusCode::OK,
        http::Version::HTTP_11,
        http::HeaderMap::new(),
        bytes::Bytes::from_static(b"stored alone"),
        None,
    );
    writer
        .store(&key, entry, Duration::from_secs(30))
        .await
        .unwrap();
    let fired = tokio::time::timeout(Duration::from_secs(5), watch.changed()).await;
    assert!(matches!(fired, Ok(Some(_))), "the waiter was not told");
    assert_eq!(waiter.get_local(&key).unwrap().body(), "stored alone");
}

/// An instance whose wait on another's lease times out with `CallOrigin`:
/// its leader calls the origin, and its followers make one new flight, not
/// a call each.
async fn call_origin_followers_make_one_new_flight(nodes: &[String]) {
    let origin = Origin::gated();
    let (_a, svc_a, _) = instance(nodes, &origin).await;
    let backend = RedisBackend::connect_cluster(nodes.to_vec()).await.unwrap();
    let b = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .wait_timeout(Duration::from_millis(300))
            .wait_fallback(tower_coalesce::WaitFallback::CallOrigin)
            .backend(backend),
    );
    let svc_b: Svc = tower::util::BoxCloneService::new(b.layer(origin.serve(echo_path)));
    support::overdue_followers_make_one_flight(&origin, svc_a, svc_b).await;
}

/// As on one server: a lease taken in Redis whose reply came after
/// `backend_timeout` is ended by its flight with its answer, so another
/// instance waiting on it is answered at once, not when it expires.
async fn a_lease_whose_reply_came_too_late_is_completed_by_its_flight(nodes: &[String]) {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use support::held::HeldLeaseAttempt;
    use tokio::sync::Semaphore;
    let origin = Origin::gated();
    let config = || {
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .backend_timeout(Duration::from_millis(200))
            .lease(Duration::from_secs(10))
            .wait_timeout(Duration::from_secs(30))
    };
    let reached = Arc::new(Semaphore::new(0));
    let late = HeldLeaseAttempt {
        inner: RedisBackend::connect_cluster(nodes.to_vec()).await.unwrap(),
        hold: 1,
        reply_late: Some(Duration::from_millis(400)),
        attempts: AtomicUsize::new(0),
        reached: reached.clone(),
        release: Arc::new(Semaphore::new(0)),
    };
    let a = CoalesceLayer::new(config().backend(late));
    let svc_a: Svc = tower::util::BoxCloneService::new(a.layer(origin.serve(echo_path)));
    let b = CoalesceLayer::new(
        config().backend(RedisBackend::connect_cluster(nodes.to_vec()).await.unwrap()),
    );
    let svc_b: Svc = tower::util::BoxCloneService::new(b.layer(origin.serve(echo_path)));
    let first = tokio::spawn(svc_a.oneshot(get("/late")));
    tokio::time::timeout(Duration::from_secs(10), reached.acquire())
        .await
        .expect("the lease was never tried")
        .unwrap()
        .forget();
    let second = tokio::spawn(svc_b.oneshot(get("/late")));
    support::until(&b, "the remote wait", |s| s.remote_waits == 1).await;
    support::until(&a, "the lease-less origin call", |_| origin.calls() == 1).await;
    origin.open_gate();
    let res = first.await.unwrap().unwrap();
    assert_eq!(body(res).await.unwrap(), "/late");
    let answered = tokio::time::Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the waiting request hung")
        .unwrap()
        .unwrap();
    assert_eq!(body(res).await.unwrap(), "/late");
    let after = answered.elapsed();
    assert_eq!(origin.calls(), 1, "{:?}", b.stats());
    assert!(
        after < Duration::from_secs(3),
        "the waiting instance was answered {after:?} after the first: it waited for the lease to end"
    );
}

//! A Redis Cluster changing under a burst: the hot key's slot moved to
//! another master, and the master owning it killed and replaced by its
//! replica. Each case has a cluster of its own, started after the previous
//! one is gone (one at a time: a loaded two-core machine running several
//! would fail nodes over by itself). No request may fail or hang.

mod support;

use std::process::Command;
use std::time::Duration;
use support::redis::{RedisCluster, RedisServer};
use support::{body, echo_path, get, Origin, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer, HttpKey, KeyExtractor, RedisBackend};

struct Instance {
    layer: CoalesceLayer,
    svc: Svc,
    backend: RedisBackend,
}

async fn instances(cluster: &RedisCluster, origin: &Origin, n: usize) -> Vec<Instance> {
    let mut all = Vec::new();
    for _ in 0..n {
        let backend = RedisBackend::connect_cluster(cluster.urls()).await.unwrap();
        let layer = CoalesceLayer::new(
            CoalesceConfig::new()
                .ttl(Duration::from_secs(60))
                .lease(Duration::from_secs(3))
                .wait_timeout(Duration::from_secs(30))
                .backend_timeout(Duration::from_millis(500))
                .backend(backend.clone()),
        );
        let svc = tower::util::BoxCloneService::new(layer.layer(origin.serve(echo_path)));
        all.push(Instance {
            layer,
            svc,
            backend,
        });
    }
    all
}

type Requests = Vec<tokio::task::JoinHandle<()>>;

/// `each` requests for `path` on every instance, each checked to answer
/// `200` with `path`; returns once the burst has gathered: one origin call,
/// every other instance waiting on the leader's lease.
async fn gathered_burst(
    instances: &[Instance],
    origin: &Origin,
    path: &str,
    each: usize,
) -> Requests {
    let calls = origin.calls();
    let waits: u64 = instances.iter().map(|i| i.layer.stats().remote_waits).sum();
    let mut requests = Vec::new();
    for instance in instances {
        for _ in 0..each {
            let (svc, path) = (instance.svc.clone(), path.to_owned());
            requests.push(tokio::spawn(async move {
                let res = tokio::time::timeout(Duration::from_secs(40), svc.oneshot(get(&path)))
                    .await
                    .expect("a request hung")
                    .expect("no request fails");
                assert_eq!(res.status(), http::StatusCode::OK, "no request fails");
                assert_eq!(body(res).await.unwrap(), path.as_str());
            }));
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now: u64 = instances.iter().map(|i| i.layer.stats().remote_waits).sum();
        if origin.calls() == calls + 1 && now - waits == (instances.len() - 1) as u64 {
            return requests;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst never gathered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn all_answered(requests: Requests) {
    for request in requests {
        request.await.expect("a request failed");
    }
}

/// How many connections to `node` listen on the shard channel `channel`.
fn shard_subscribers(node: &RedisServer, channel: &str) -> u64 {
    let (_, n): (String, u64) = redis::cmd("PUBSUB")
        .arg("SHARDNUMSUB")
        .arg(channel)
        .query(&mut node.conn())
        .unwrap();
    n
}

fn node_id(node: &RedisServer) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query(&mut node.conn())
        .unwrap()
}

/// Moves `slot` from `from` to `to`, keys and all, as `redis-cli --cluster
/// reshard` does: `IMPORTING` on the target, `MIGRATING` on the source,
/// `MIGRATE` of its keys, then the new owner told to every master.
fn move_slot(cluster: &RedisCluster, slot: u16, from: &RedisServer, to: &RedisServer) {
    let (from_id, to_id) = (node_id(from), node_id(to));
    let setslot = |node: &RedisServer, args: &[&str]| {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(args)
            .query(&mut node.conn())
            .unwrap();
    };
    setslot(to, &["IMPORTING", &from_id]);
    setslot(from, &["MIGRATING", &to_id]);
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query(&mut from.conn())
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let _: () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to.port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query(&mut from.conn())
            .unwrap();
    }
    for (master, _) in cluster.masters() {
        setslot(master, &["NODE", &to_id]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_changing_under_a_burst() {
    the_hot_slot_moved_mid_burst_fails_nothing().await;
    the_hot_master_killed_mid_burst_fails_nothing_and_coalescing_resumes().await;
}

async fn the_hot_slot_moved_mid_burst_fails_nothing() {
    let cluster = RedisCluster::start();
    let origin = Origin::gated();
    let instances = instances(&cluster, &origin, 4).await;
    let key = HttpKey::new().extract(&get("/moving")).unwrap();
    let slot = cluster.slot_of(&instances[0].backend.value_key(&key));
    let from = cluster.master_of(slot).unwrap();
    let to = cluster
        .masters()
        .into_iter()
        .map(|(node, _)| node)
        .find(|node| node.port != from.port)
        .unwrap();

    let requests = gathered_burst(&instances, &origin, "/moving", 50).await;
    // The leader's lease moves with the slot; the waiters' subscriptions
    // are dropped by the old owner.
    move_slot(&cluster, slot, from, to);
    assert_eq!(cluster.master_of(slot).unwrap().port, to.port);
    // The three waiting instances subscribe again, on the new master, so
    // that the leader's completion message (published there) reaches them.
    let channel = instances[0].backend.done_channel(&key);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while shard_subscribers(to, &channel) != 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the waiters did not subscribe again on the slot's new master"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    origin.open_gate();
    all_answered(requests).await;
    assert!(
        origin.calls() <= 2,
        "at most one more origin call for the move: {}",
        origin.calls()
    );

    // Coalescing goes on on the slot's new master.
    let before = origin.calls();
    let after = paths_in_slot(&instances[0].backend, slot).next().unwrap();
    let requests = burst(&instances, &after, 20).await;
    all_answered(requests).await;
    assert_eq!(origin.calls() - before, 1, "one origin call after the move");
}

/// Paths whose keys are on `slot`, found as they are asked for (one in
/// about 16,384 paths is).
fn paths_in_slot(backend: &RedisBackend, slot: u16) -> impl Iterator<Item = String> + '_ {
    (0..).map(|i| format!("/slot/{i}")).filter(move |path| {
        let key = HttpKey::new().extract(&get(path)).unwrap();
        support::redis::slot(&backend.value_key(&key)) == slot
    })
}

/// `each` requests for `path` on every instance, one instance after the
/// other, the origin's gate open.
async fn burst(instances: &[Instance], path: &str, each: usize) -> Requests {
    let mut requests = Vec::new();
    for instance in instances {
        for _ in 0..each {
            let (svc, path) = (instance.svc.clone(), path.to_owned());
            requests.push(tokio::spawn(async move {
                let res = svc.oneshot(get(&path)).await.expect("no request fails");
                assert_eq!(res.status(), http::StatusCode::OK);
                assert_eq!(body(res).await.unwrap(), path.as_str());
            }));
        }
        // One instance at a time: the first leads, the others find its
        // answer stored or its lease held.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    requests
}

async fn the_hot_master_killed_mid_burst_fails_nothing_and_coalescing_resumes() {
    let cluster = RedisCluster::start_with(3, 1, Duration::from_millis(2000));
    let origin = Origin::gated();
    let instances = instances(&cluster, &origin, 4).await;
    let key = HttpKey::new().extract(&get("/killed")).unwrap();
    let slot = cluster.slot_of(&instances[0].backend.value_key(&key));
    let master = cluster.master_of(slot).unwrap().port;
    let later = paths_in_slot(&instances[0].backend, slot);

    let requests = gathered_burst(&instances, &origin, "/killed", 50).await;
    let killed = Command::new("kill")
        .args([
            "-KILL",
            &cluster
                .nodes()
                .iter()
                .find(|n| n.port == master)
                .unwrap()
                .pid()
                .to_string(),
        ])
        .status()
        .unwrap();
    assert!(killed.success());
    let start = std::time::Instant::now();
    origin.open_gate();
    all_answered(requests).await;
    // A dead node's connection fails at once: the burst waits out at most
    // one `backend_timeout` (500 ms) beyond the origin's answer (at once
    // here). Generous for a loaded machine.
    let took = start.elapsed();
    println!("every request answered {took:?} after the master was killed");
    assert!(
        took < Duration::from_millis(500 + 1_500),
        "the burst took {took:?} to answer after its master was killed"
    );
    assert!(
        origin.calls() <= 1 + instances.len(),
        "at most one origin call per instance: {}",
        origin.calls()
    );

    // The replica takes the slot over; coalescing across instances resumes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut resumed = false;
    for path in later {
        assert!(
            tokio::time::Instant::now() < deadline,
            "coalescing never resumed"
        );
        let before = origin.calls();
        all_answered(burst(&instances, &path, 5).await).await;
        let promoted = cluster.master_of(slot).is_some_and(|n| n.port != master);
        if origin.calls() - before == 1 && promoted {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(resumed, "coalescing never resumed on the promoted replica");
    println!(
        "coalescing resumed {:?} after the master was killed",
        start.elapsed()
    );
}

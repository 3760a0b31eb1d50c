//! Invariant 10 across Redis resets: a purge is never undone, also after
//! Redis lost its purge sequence (a restart without persistence,
//! `FLUSHALL`) or went back to an older one (a failover to a replica that
//! lagged). Each instance is a layer with its own `RedisBackend`.

mod support;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::redis::RedisServer;
use support::{body, get, Origin, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{BoxError, CoalesceConfig, CoalesceLayer, Purger, RedisBackend};

/// An instance whose origin answers `<path> <n>`, `n` its calls so far.
async fn instance(url: &str, origin: &Origin) -> (Purger, Svc) {
    let backend = RedisBackend::connect(url).await.unwrap();
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .backend(backend),
    );
    let calls = origin.calls.clone();
    let answer = move |req: Request<Full<Bytes>>| {
        let n = calls.load(Ordering::SeqCst);
        async move {
            let text = format!("{} {n}", req.uri().path());
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(text))))
        }
    };
    let svc = Svc::new(layer.layer(origin.serve(answer)));
    (layer.purger(), svc)
}

async fn answer(svc: &Svc, uri: &str) -> String {
    let res = svc.clone().oneshot(get(uri)).await.unwrap();
    String::from_utf8(body(res).await.unwrap().to_vec()).unwrap()
}

/// Purges `url` through `purger`, retrying while Redis comes back.
async fn purge_url(purger: &Purger, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(error) = purger.purge_url(url).await {
        assert!(Instant::now() < deadline, "no purge within 10 s: {error}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `svc` stops answering `old` within 5 s (the near cache's trust bound
/// and a heartbeat, with room to spare).
async fn until_not(svc: &Svc, uri: &str, old: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while answer(svc, uri).await == old {
        assert!(
            Instant::now() < deadline,
            "still answered {old:?} 5 s after a purge that returned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two instances, several purges, then `reset` does something to Redis,
/// then an answer is filled and stored, then a purge of it through the
/// other instance: both must stop serving it.
async fn a_purge_after(reset: impl FnOnce(&mut RedisServer)) {
    let mut server = RedisServer::start();
    let origin = Origin::open();
    let (a, svc_a) = instance(&server.url(), &origin).await;
    let (b, svc_b) = instance(&server.url(), &origin).await;
    for i in 0..5 {
        purge_url(&a, &format!("http://shop.example/other/{i}")).await;
    }
    let old = answer(&svc_a, "/p").await;
    assert_eq!(answer(&svc_b, "/p").await, old, "stored and shared");

    reset(&mut server);

    // Filled again after the reset, where it is lost with it.
    let _ = answer(&svc_a, "/p").await;
    let old = answer(&svc_a, "/p").await;
    let _ = answer(&svc_b, "/p").await;
    purge_url(&b, "/p").await;
    until_not(&svc_a, "/p", &old).await;
    until_not(&svc_b, "/p", &old).await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_after_redis_restarted_without_its_data_is_not_undone() {
    a_purge_after(RedisServer::restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_after_flushall_is_not_undone() {
    a_purge_after(|server: &mut RedisServer| {
        let _: () = redis::cmd("FLUSHALL").query(&mut server.conn()).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_after_a_failover_to_a_replica_that_lagged_is_not_undone() {
    // The replica's copy of the purge names, taken two purges ago, then
    // put back: Redis's sequence is present but behind what the
    // instances saw.
    let mut server = RedisServer::start();
    let origin = Origin::open();
    let (a, svc_a) = instance(&server.url(), &origin).await;
    let (b, svc_b) = instance(&server.url(), &origin).await;
    for i in 0..3 {
        purge_url(&a, &format!("http://shop.example/other/{i}")).await;
    }
    let replica = snapshot(&mut server, "*{purge}*");
    for i in 3..5 {
        purge_url(&a, &format!("http://shop.example/other/{i}")).await;
    }
    let old = answer(&svc_a, "/p").await;
    assert_eq!(answer(&svc_b, "/p").await, old);
    restore(&mut server, replica);

    purge_url(&b, "/p").await;
    until_not(&svc_a, "/p", &old).await;
    until_not(&svc_b, "/p", &old).await;
}

/// `DUMP` of every name matching `pattern`, with its remaining life.
fn snapshot(server: &mut RedisServer, pattern: &str) -> Vec<(String, Vec<u8>, i64)> {
    let mut conn = server.conn();
    let names: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut conn).unwrap();
    assert!(!names.is_empty(), "nothing matches {pattern}");
    names
        .into_iter()
        .map(|name| {
            let dump: Vec<u8> = redis::cmd("DUMP").arg(&name).query(&mut conn).unwrap();
            let ttl: i64 = redis::cmd("PTTL").arg(&name).query(&mut conn).unwrap();
            (name, dump, ttl.max(0))
        })
        .collect()
}

/// Puts a [`snapshot`] back in place of what is there now.
fn restore(server: &mut RedisServer, snapshot: Vec<(String, Vec<u8>, i64)>) {
    let mut conn = server.conn();
    for (name, dump, ttl) in snapshot {
        let _: () = redis::cmd("RESTORE")
            .arg(&name)
            .arg(ttl)
            .arg(dump)
            .arg("REPLACE")
            .query(&mut conn)
            .unwrap();
    }
}

#[tokio::test]
async fn an_eviction_policy_that_can_drop_purge_records_is_warned_about() {
    for (policy, warned) in [("volatile-lru", true), ("noeviction", false)] {
        let server = RedisServer::start_with(&["--maxmemory-policy", policy]);
        let captured = support::Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(captured.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let _backend = RedisBackend::connect(server.url()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !captured.text().contains("maxmemory_policy") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            captured
                .text()
                .contains(&format!("maxmemory_policy=\"{policy}\"")),
            warned,
            "{policy}: {}",
            captured.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_flushall_is_not_undone_by_the_lost_presence_marks() {
    // FLUSHALL takes the resources' presence marks too: a write then finds
    // nothing stored, and purges nothing, while near caches still hold
    // what was filled before. They must drop it once the reset is seen.
    let server = RedisServer::start();
    let origin = Origin::open();
    let (_, svc_a) = instance(&server.url(), &origin).await;
    let (_, svc_b) = instance(&server.url(), &origin).await;
    let old = answer(&svc_a, "/p").await;
    assert_eq!(answer(&svc_b, "/p").await, old);
    let _: () = redis::cmd("FLUSHALL").query(&mut server.conn()).unwrap();
    let write = Request::put("/p").body(Full::new(Bytes::new())).unwrap();
    let res = svc_b.clone().oneshot(write).await.unwrap();
    assert!(res.status().is_success());
    assert!(!res.headers().contains_key("coalesce-purge"));
    until_not(&svc_a, "/p", &old).await;
    until_not(&svc_b, "/p", &old).await;
}

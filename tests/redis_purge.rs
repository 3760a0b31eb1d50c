//! Purges across instances sharing a real redis-server: each instance a
//! layer with its own `RedisBackend` (its own connection), as separate
//! processes would have.

mod support;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::redis::RedisServer;
use support::{body, get, until, Origin, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{BoxError, CoalesceConfig, CoalesceLayer, Outcome, RedisBackend, Tag};

/// An instance whose origin answers `<path> <n>`, tagged `t`.
async fn instance(server: &RedisServer, origin: &Origin) -> (CoalesceLayer, Svc, RedisBackend) {
    let backend = RedisBackend::connect(server.url()).await.unwrap();
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .tag_header(http::HeaderName::from_static("surrogate-key"))
            .backend(backend.clone()),
    );
    let calls = origin.calls.clone();
    let answer = move |req: Request<Full<Bytes>>| {
        let n = calls.load(Ordering::SeqCst);
        async move {
            let mut res =
                Response::new(Full::new(Bytes::from(format!("{} {n}", req.uri().path()))));
            res.headers_mut()
                .insert("surrogate-key", "t".parse().unwrap());
            Ok::<_, BoxError>(res)
        }
    };
    let svc = Svc::new(layer.layer(origin.serve(answer)));
    (layer, svc, backend)
}

async fn answer(svc: &Svc, uri: &str) -> (Outcome, String) {
    let res = svc.clone().oneshot(get(uri)).await.unwrap();
    let outcome = *res.extensions().get::<Outcome>().unwrap();
    (
        outcome,
        String::from_utf8(body(res).await.unwrap().to_vec()).unwrap(),
    )
}

/// Asks `svc` until it answers something other than `old`, for at most a
/// second; returns how long that took.
async fn until_not(svc: &Svc, uri: &str, old: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (_, got) = answer(svc, uri).await;
        if got != old {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "still answered {old:?} a second after the purge"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `EVALSHA` calls counted by Redis so far.
fn scripts_run(server: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.conn())
        .unwrap();
    info.lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split("calls=").nth(1)?.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_through_one_instance_reaches_the_others_near_caches() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let (a, svc_a, _) = instance(&server, &origin).await;
    let (_, svc_b, _) = instance(&server, &origin).await;
    let (_, svc_c, _) = instance(&server, &origin).await;
    assert_eq!(answer(&svc_a, "/p").await, (Outcome::Leader, "/p 1".into()));
    // The others hold it in their near caches now.
    for svc in [&svc_b, &svc_c] {
        answer(svc, "/p").await;
        assert_eq!(answer(svc, "/p").await, (Outcome::Hit, "/p 1".into()));
    }

    let before = scripts_run(&server);
    let purged = a.purger().purge_tag("t").await.unwrap();
    assert!(purged.shared);
    assert_eq!(
        scripts_run(&server) - before,
        1,
        "a tag purge is one script (which also publishes)"
    );
    for svc in [&svc_b, &svc_c] {
        until_not(svc, "/p", "/p 1").await;
    }
    assert_eq!(origin.calls(), 2, "one new fill for all three");
    assert_eq!(answer(&svc_a, "/p").await, (Outcome::Hit, "/p 2".into()));

    // A URL purge: the log's script and the key's mark.
    let before = scripts_run(&server);
    a.purger().purge_url("/p").await.unwrap();
    assert_eq!(scripts_run(&server) - before, 2);
    for svc in [&svc_b, &svc_c] {
        until_not(svc, "/p", "/p 2").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_racing_another_instances_fill_keeps_its_answer_out_of_redis() {
    let server = RedisServer::start();
    let origin = Origin::gated();
    let (a, svc_a, backend) = instance(&server, &origin).await;
    let (b, svc_b, _) = instance(&server, &origin).await;
    let first = tokio::spawn({
        let svc = svc_a.clone();
        async move { svc.oneshot(get("/k")).await.unwrap().status() }
    });
    until(&a, "the fill's origin call", |s| s.origin_calls == 1).await;
    b.purger().purge_url("/k").await.unwrap();
    origin.open_gate();
    assert!(first.await.unwrap().is_success());
    let key =
        tower_coalesce::KeyExtractor::extract(&tower_coalesce::HttpKey::new(), &get("/k")).unwrap();
    let stored: Option<Vec<u8>> = redis::cmd("GET")
        .arg(backend.value_key(&key))
        .query(&mut server.conn())
        .unwrap();
    assert!(stored.is_none(), "the purged fill's answer was stored");
    assert_eq!(answer(&svc_b, "/k").await.0, Outcome::Leader);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_missed_while_disconnected_is_read_back_on_reconnect() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let (_, svc_a, _) = instance(&server, &origin).await;
    let (_, svc_b, _) = instance(&server, &origin).await;
    answer(&svc_a, "/m").await;
    answer(&svc_b, "/m").await;
    assert_eq!(answer(&svc_b, "/m").await, (Outcome::Hit, "/m 1".into()));

    // A purge whose message nobody heard: recorded in the log, not
    // published (as one published while the connections were down).
    let mut conn = server.conn();
    let position: u64 = redis::cmd("HINCRBY")
        .arg("coalesce:3:{purge}:seq")
        .arg("p")
        .arg(1)
        .query(&mut conn)
        .unwrap();
    let mut target = vec![b't'];
    target.extend_from_slice(&Tag::new("t").unwrap().digest());
    let _: () = redis::cmd("ZADD")
        .arg("coalesce:3:{purge}:log")
        .arg(position)
        .arg(&target)
        .query(&mut conn)
        .unwrap();
    assert_eq!(answer(&svc_b, "/m").await.1, "/m 1", "not heard of yet");
    // Every connection but this one drops; the instances reconnect, read
    // the purge back, and serve nothing it names.
    // (RESP3 connections that subscribe count as pub/sub ones.)
    for kind in ["normal", "pubsub"] {
        let _: () = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg(kind)
            .arg("SKIPME")
            .arg("yes")
            .query(&mut conn)
            .unwrap();
    }
    let start = Instant::now();
    loop {
        let (_, got) = answer(&svc_b, "/m").await;
        if got != "/m 1" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the missed purge was never read back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn unsafe_requests_to_one_url_together_share_their_purges() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let (layer, svc, _) = instance(&server, &origin).await;
    assert_eq!(answer(&svc, "/m").await.0, Outcome::Leader);
    assert_eq!(answer(&svc, "/m").await.0, Outcome::Hit);
    let scripts = scripts_run(&server);
    let puts = (0..100).map(|i| {
        let req = Request::put("/m")
            .body(Full::new(Bytes::from(format!("version {i}"))))
            .unwrap();
        svc.clone().oneshot(req)
    });
    for res in futures_util::future::join_all(puts).await {
        assert_eq!(res.unwrap().status(), http::StatusCode::OK);
    }
    // The first write's purge goes at once; the 99 that succeed while it
    // is under way share the one after it, which is sent once each of
    // them has succeeded.
    let purges = layer.stats().purges;
    assert!((1..=2).contains(&purges), "{purges} purges for 100 writes");
    assert_eq!(scripts_run(&server) - scripts, 2 * purges);
    assert_eq!(answer(&svc, "/m").await.0, Outcome::Leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnect_the_near_cache_is_not_trusted_until_missed_purges_are_read() {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let origin = Origin::open();
    let (_, svc, backend) = instance(&server, &origin).await;
    answer(&svc, "/n").await;
    let key = tower_coalesce::KeyExtractor::<Full<Bytes>>::extract_head(
        &tower_coalesce::HttpKey::new(),
        &get("/n").into_parts().0,
    )
    .unwrap();
    assert!(tower_coalesce::Store::get_local(&backend, &key).is_some());

    // Every other connection dropped, then Redis busy for a second before
    // it reads anything else: the instance reconnects, and its read-back
    // of the purges it may have missed waits behind the sleep.
    let mut conn = server.conn();
    let busy = std::thread::spawn(move || {
        let _: () = redis::pipe()
            .cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .arg("SKIPME")
            .arg("yes")
            .ignore()
            .cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .ignore()
            .cmd("DEBUG")
            .arg("SLEEP")
            .arg("1")
            .ignore()
            .query(&mut conn)
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        assert!(
            tower_coalesce::Store::get_local(&backend, &key).is_none(),
            "the near cache answered before the purges missed were read back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    busy.join().unwrap();
    // Read back: trusted again.
    let start = Instant::now();
    while tower_coalesce::Store::get_local(&backend, &key).is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never trusted again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `PUT /w` through `svc`; its status, `coalesce-purge` header and body.
async fn write(svc: &Svc) -> (http::StatusCode, Option<String>, String) {
    let req = Request::put("/w")
        .body(Full::new(Bytes::from_static(b"new")))
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let header = res
        .headers()
        .get("coalesce-purge")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = String::from_utf8(body(res).await.unwrap().to_vec()).unwrap();
    (status, header, text)
}

#[tokio::test]
async fn a_write_whose_purge_failed_says_so_or_fails_as_configured() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let (layer, svc, backend) = instance(&server, &origin).await;
    let failing = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .backend(backend)
            .write_purge_failure(tower_coalesce::WritePurgeFailure::Fail),
    );
    let failing_svc = Svc::new(failing.layer(origin.serve(support::echo_path)));
    // While Redis answers, a write purges and says nothing more.
    assert_eq!(write(&svc).await.1, None);
    assert_eq!(layer.stats().write_purge_failures, 0);

    // Redis gone: the write happened, its purge did not.
    drop(server);
    let (status, header, _) = write(&svc).await;
    assert_eq!(status, http::StatusCode::OK, "the origin's own answer");
    assert_eq!(header.as_deref(), Some("failed"));
    assert_eq!(layer.stats().write_purge_failures, 1);
    let (status, header, text) = write(&failing_svc).await;
    assert_eq!(status, http::StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(header.as_deref(), Some("failed"));
    assert!(text.contains("could not be purged"), "{text}");
    assert_eq!(failing.stats().write_purge_failures, 1);
}

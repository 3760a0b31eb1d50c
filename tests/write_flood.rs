//! Invariant 10 under hostile traffic: writes (successful unsafe requests)
//! purge what they change, but a flood of writes to URLs nothing was
//! stored for costs no purge record — it cannot push the purge log past its
//! bound and so make every stored answer count as purged, and it leaves no
//! marks in Redis — while a write to a URL whose answer is being filled in
//! another instance still keeps that answer from being stored.

mod support;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::Full;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::redis::RedisServer;
use support::{body, get, until, Origin, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{BoxError, CoalesceConfig, CoalesceLayer, Outcome, RedisBackend};

/// The origin: `GET`s answer `<path> <n>`, writes `204`.
fn answer(origin: &Origin) -> impl Fn(Request<Full<Bytes>>) -> Answer + Clone {
    let calls = origin.calls.clone();
    move |req: Request<Full<Bytes>>| {
        let n = calls.load(Ordering::SeqCst);
        let write = req.method() != http::Method::GET;
        let path = req.uri().path().to_owned();
        Box::pin(async move {
            let mut res = Response::new(Full::new(Bytes::from(format!("{path} {n}"))));
            if write {
                *res.status_mut() = http::StatusCode::NO_CONTENT;
            }
            Ok(res)
        })
    }
}

type Answer = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send>,
>;

async fn outcome(svc: Svc, req: Request<Full<Bytes>>) -> (Outcome, String) {
    let res = svc.oneshot(req).await.unwrap();
    let outcome = *res.extensions().get::<Outcome>().unwrap();
    let text = String::from_utf8(body(res).await.unwrap().to_vec()).unwrap();
    (outcome, text)
}

/// `n` successful `POST`s to distinct URLs, 64 at a time.
async fn flood(svc: &Svc, n: usize) {
    let writes = futures_util::stream::iter(0..n).map(|i| {
        let req = Request::post(format!("/flood/{i}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        svc.clone().oneshot(req)
    });
    let mut writes = writes.buffer_unordered(64);
    while let Some(res) = writes.next().await {
        assert_eq!(res.unwrap().status(), http::StatusCode::NO_CONTENT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_writes_to_urls_never_stored_leaves_stored_answers_hits() {
    let origin = Origin::open();
    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(600)));
    let svc = Svc::new(layer.layer(origin.serve(answer(&origin))));
    assert_eq!(outcome(svc.clone(), get("/keep")).await.0, Outcome::Leader);
    flood(&svc, 100_000).await;
    assert_eq!(outcome(svc.clone(), get("/keep")).await.0, Outcome::Hit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_a_flood_of_writes_to_urls_never_stored_costs_no_record_and_no_key() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let backend = RedisBackend::connect(server.url()).await.unwrap();
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(600))
            .backend(backend),
    );
    let svc = Svc::new(layer.layer(origin.serve(answer(&origin))));
    assert_eq!(outcome(svc.clone(), get("/keep")).await.0, Outcome::Leader);
    let mut conn = server.conn();
    let keys =
        |conn: &mut redis::Connection| -> usize { redis::cmd("DBSIZE").query(conn).unwrap() };
    let before = keys(&mut conn);
    flood(&svc, 100_000).await;
    assert_eq!(outcome(svc.clone(), get("/keep")).await.0, Outcome::Hit);
    assert_eq!(keys(&mut conn), before, "the writes left keys in Redis");
    let log: usize = redis::cmd("ZCARD")
        .arg("coalesce:3:{purge}:log")
        .query(&mut conn)
        .unwrap();
    assert_eq!(log, 0, "purge records for resources with nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_still_fences_a_fill_under_way_in_another_instance() {
    let server = RedisServer::start();
    let instance = |origin: &Origin| {
        let (origin, url) = (origin.clone(), server.url());
        async move {
            let backend = RedisBackend::connect(url).await.unwrap();
            let layer = CoalesceLayer::new(
                CoalesceConfig::new()
                    .ttl(Duration::from_secs(600))
                    .backend(backend),
            );
            let svc = Svc::new(layer.layer(origin.serve(answer(&origin))));
            (layer, svc)
        }
    };
    let held = Origin::gated();
    let (filling, filling_svc) = instance(&held).await;
    let (_, writing_svc) = instance(&Origin::open()).await;
    // A fill of /f under way in one instance (its origin call held)...
    let fill = tokio::spawn(outcome(filling_svc.clone(), get("/f")));
    until(&filling, "the fill's origin call", |s| s.origin_calls == 1).await;
    // ... and a write of /f through the other, with nothing stored yet.
    let write = Request::put("/f").body(Full::new(Bytes::new())).unwrap();
    assert_eq!(outcome(writing_svc.clone(), write).await.0, Outcome::Bypass);
    held.open_gate();
    assert_eq!(fill.await.unwrap().0, Outcome::Leader);
    // Its answer was read before the write: given, not stored.
    assert_eq!(
        outcome(writing_svc.clone(), get("/f")).await.0,
        Outcome::Leader
    );
}

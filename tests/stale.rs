//! Stale-while-revalidate: a stored answer past its freshness but inside its
//! stale window is answered at once while exactly one refresh runs, in one
//! process and across processes sharing a Redis.

mod support;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{body, get, until, Svc};
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};
use tower_coalesce::{BoxError, CoalesceConfig, CoalesceLayer, Outcome, RedisBackend};

/// Answers `answer <n>` for its n-th call, `Set-Cookie` from the call
/// `personal_from` on; every call after the first waits for a permit.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    status_from: Arc<AtomicUsize>,
    personal_from: Arc<AtomicUsize>,
}

impl Origin {
    fn new() -> Self {
        Self {
            calls: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            status_from: Arc::new(AtomicUsize::new(usize::MAX)),
            personal_from: Arc::new(AtomicUsize::new(usize::MAX)),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn serve(&self) -> impl support::OriginService {
        let me = self.clone();
        tower::service_fn(move |_req: Request<Full<Bytes>>| {
            let me = me.clone();
            async move {
                let n = me.calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n > 1 {
                    me.gate.acquire().await.unwrap().forget();
                }
                let mut res = Response::new(Full::new(Bytes::from(format!("answer {n}"))));
                if n >= me.status_from.load(Ordering::SeqCst) {
                    *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                }
                if n >= me.personal_from.load(Ordering::SeqCst) {
                    res.headers_mut()
                        .insert("set-cookie", "sid=1".parse().unwrap());
                }
                Ok(res)
            }
        })
    }
}

/// Fresh 100 ms, then served stale for a minute while refreshed.
fn config() -> CoalesceConfig {
    CoalesceConfig::new()
        .ttl(Duration::from_millis(100))
        .stale_while_revalidate(Duration::from_secs(60))
}

async fn answer(svc: &Svc) -> (Outcome, String) {
    let res = svc.clone().oneshot(get("/a")).await.unwrap();
    let outcome = *res.extensions().get::<Outcome>().unwrap();
    let text = String::from_utf8(body(res).await.unwrap().to_vec()).unwrap();
    (outcome, text)
}

/// `n` concurrent requests to each of `svcs`, each bounded: none may wait
/// for the (gated) refresh.
async fn burst(svcs: &[Svc], n: usize) -> Vec<(Outcome, String)> {
    let calls = svcs.iter().flat_map(|svc| (0..n).map(move |_| svc.clone()));
    let calls = calls.map(|svc| async move {
        tokio::time::timeout(Duration::from_secs(5), answer(&svc))
            .await
            .expect("a stale answer waited for the refresh")
    });
    futures_util::future::join_all(calls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_is_served_at_once_while_one_refresh_runs() {
    let origin = Origin::new();
    let layer = CoalesceLayer::new(config());
    let svc = Svc::new(layer.layer(origin.serve()));
    assert_eq!(answer(&svc).await, (Outcome::Leader, "answer 1".into()));
    assert_eq!(answer(&svc).await, (Outcome::Hit, "answer 1".into()));
    tokio::time::sleep(Duration::from_millis(150)).await;

    // The refresh's origin call is held: every request is still answered.
    for (outcome, text) in burst(std::slice::from_ref(&svc), 50).await {
        assert_eq!((outcome, text.as_str()), (Outcome::Stale, "answer 1"));
    }
    // The refresh runs detached: its origin call may come after the burst.
    until(&layer, "the refresh's origin call", |_| origin.calls() == 2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(origin.calls(), 2, "one refresh");
    let stats = layer.stats();
    assert_eq!((stats.stale, stats.refreshes), (50, 1));

    origin.gate.add_permits(1);
    until(&layer, "the refresh", |s| s.stored == 2).await;
    assert_eq!(answer(&svc).await, (Outcome::Hit, "answer 2".into()));
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_instances_on_one_redis_one_refresh_runs_and_everyone_gets_its_answer() {
    const INSTANCES: usize = 3;
    let server = support::redis::RedisServer::start();
    let origin = Origin::new();
    let mut layers = Vec::new();
    let mut svcs = Vec::new();
    for _ in 0..INSTANCES {
        let backend = RedisBackend::connect(server.url()).await.unwrap();
        let layer = CoalesceLayer::new(config().backend(backend));
        svcs.push(Svc::new(layer.layer(origin.serve())));
        layers.push(layer);
    }
    let _shown = support::StatsOnPanic(&layers);
    assert_eq!(answer(&svcs[0]).await.0, Outcome::Leader);
    tokio::time::sleep(Duration::from_millis(150)).await;

    // Instance 0 holds it in its near cache; the others find it in Redis.
    for (outcome, text) in burst(&svcs, 10).await {
        assert_eq!((outcome, text.as_str()), (Outcome::Stale, "answer 1"));
    }
    // Each instance starts a refresh; one takes the lease, the others wait
    // for its answer, detached from every caller.
    for layer in &layers {
        until(layer, "a refresh", |s| s.refreshes == 1).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(origin.calls(), 2, "one refresh among every instance");

    origin.gate.add_permits(1);
    for layer in &layers {
        until(layer, "the refreshed answer", |_| {
            layer.flights_in_progress() == 0
        })
        .await;
    }
    for svc in &svcs {
        assert_eq!(answer(svc).await, (Outcome::Hit, "answer 2".into()));
    }
    assert_eq!(origin.calls(), 2);
}

/// Without a near cache every request that is not a hit goes through the
/// flight table, where the refresh is under way: it must still be answered
/// at once with the stale answer the refresh replaces, not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_and_no_near_cache_requests_during_a_refresh_are_answered_stale() {
    let server = support::redis::RedisServer::start();
    let origin = Origin::new();
    let backend = RedisBackend::builder(server.url())
        .without_near_cache()
        .connect()
        .await
        .unwrap();
    let layer = CoalesceLayer::new(config().backend(backend));
    let _shown = support::StatsOnPanic(std::slice::from_ref(&layer));
    let svc = Svc::new(layer.layer(origin.serve()));
    assert_eq!(answer(&svc).await, (Outcome::Leader, "answer 1".into()));
    tokio::time::sleep(Duration::from_millis(150)).await;

    // The flight finds it stale in Redis, answers with it, and refreshes
    // it; the refresh's origin call is held.
    assert_eq!(answer(&svc).await, (Outcome::Stale, "answer 1".into()));
    until(&layer, "the refresh's origin call", |_| origin.calls() == 2).await;
    for (outcome, text) in burst(std::slice::from_ref(&svc), 20).await {
        assert_eq!((outcome, text.as_str()), (Outcome::Stale, "answer 1"));
    }
    assert_eq!(origin.calls(), 2, "one refresh");
    assert_eq!(layer.stats().refreshes, 1);

    // A request that refuses stored answers (`no-cache`) is not given the
    // stale one: it follows the refresh, and gets its answer.
    let refusing = tokio::spawn({
        let svc = svc.clone();
        async move {
            let req = Request::get("/a")
                .header("cache-control", "no-cache")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let res = svc.oneshot(req).await.unwrap();
            String::from_utf8(body(res).await.unwrap().to_vec()).unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!refusing.is_finished(), "no-cache took the stale answer");

    origin.gate.add_permits(1);
    assert_eq!(refusing.await.unwrap(), "answer 2");
    until(&layer, "the refresh", |s| s.stored == 2).await;
    assert_eq!(answer(&svc).await, (Outcome::Hit, "answer 2".into()));
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_refresh_leaves_the_stale_answer_and_is_retried_after_a_backoff() {
    let origin = Origin::new();
    origin.status_from.store(2, Ordering::SeqCst);
    origin.gate.add_permits(100);
    let layer = CoalesceLayer::new(config());
    let svc = Svc::new(layer.layer(origin.serve()));
    answer(&svc).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    for _ in 0..20 {
        assert_eq!(answer(&svc).await, (Outcome::Stale, "answer 1".into()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One failed refresh; the requests after it within the backoff (1 s)
    // tried none.
    assert_eq!(origin.calls(), 2);
    assert_eq!(layer.stats().refreshes, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(answer(&svc).await, (Outcome::Stale, "answer 1".into()));
    until(&layer, "the second refresh", |s| s.refreshes == 2).await;
    until(&layer, "its origin call", |_| origin.calls() == 3).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_answer_is_private_drops_the_stale_answer() {
    let origin = Origin::new();
    origin.personal_from.store(2, Ordering::SeqCst);
    origin.gate.add_permits(100);
    let layer = CoalesceLayer::new(config());
    let svc = Svc::new(layer.layer(origin.serve()));
    answer(&svc).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(answer(&svc).await.0, Outcome::Stale);
    until(&layer, "the refresh", |_| layer.flights_in_progress() == 0).await;
    // Its answer could not be shared: the stale one is gone, and the key
    // passes.
    let (outcome, text) = answer(&svc).await;
    assert_eq!(outcome, Outcome::Pass);
    assert_eq!(text, "answer 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_early_refresh_a_hot_answer_is_refreshed_before_it_goes_stale() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    // The origin takes 100 ms: XFetch's delta.
    let origin = tower::service_fn(move |_req: Request<Full<Bytes>>| {
        let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(format!("answer {n}")))))
        }
    });
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(2))
            .stale_while_revalidate(Duration::from_secs(10))
            .early_refresh(3.0),
    );
    let svc = Svc::new(layer.layer(origin));
    assert_eq!(answer(&svc).await.0, Outcome::Leader);
    // A hit every 10 ms past the answer's 2 s of freshness: it is refreshed
    // before they end, and no request is ever answered stale.
    let until = tokio::time::Instant::now() + Duration::from_millis(2300);
    while tokio::time::Instant::now() < until {
        let (outcome, _) = answer(&svc).await;
        assert_eq!(outcome, Outcome::Hit);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = layer.stats();
    assert!(stats.refreshes >= 1, "{stats:?}");
    assert_eq!(stats.stale, 0);
    until_calls(&layer, &calls, 1 + stats.refreshes as usize).await;
    // Each refresh is one origin call, however many hits asked for one;
    // a handful in all, not one per hit. (How many depends on the origin
    // time XFetch measures, which a loaded machine stretches: 4 were seen
    // where 1 or 2 are usual.)
    assert!(stats.early_refreshes >= stats.refreshes, "{stats:?}");
    assert!(stats.refreshes <= 10, "{stats:?}");
}

async fn until_calls(layer: &CoalesceLayer, calls: &AtomicUsize, n: usize) {
    until(layer, "the refreshes' origin calls", |_| {
        calls.load(Ordering::SeqCst) == n && layer.flights_in_progress() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_revalidates_and_a_304_renews_the_stored_answer_without_a_body() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let origin = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let asked = req.headers().get("if-none-match").cloned();
            let res = match asked {
                Some(tag) if tag == "\"v1\"" => Response::builder()
                    .status(304)
                    .header("etag", "\"v1\"")
                    .header("x-version", n.to_string())
                    .body(Full::new(Bytes::new())),
                _ => Response::builder()
                    .header("etag", "\"v1\"")
                    .header("x-version", n.to_string())
                    .body(Full::new(Bytes::from_static(b"the body"))),
            };
            Ok::<_, BoxError>(res.unwrap())
        }
    });
    let layer = CoalesceLayer::new(config());
    let svc = Svc::new(layer.layer(origin));
    let version = |res: &Response<_>| res.headers()["x-version"].to_str().unwrap().to_owned();
    let res = svc.clone().oneshot(get("/a")).await.unwrap();
    assert_eq!(version(&res), "1");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stale = svc.clone().oneshot(get("/a")).await.unwrap();
    assert_eq!(stale.extensions().get::<Outcome>(), Some(&Outcome::Stale));
    until(&layer, "the revalidation", |s| {
        s.revalidations == 1 && s.stored == 2
    })
    .await;

    // The stored answer: the old body, the 304's headers, fresh again.
    let hit = svc.clone().oneshot(get("/a")).await.unwrap();
    assert_eq!(hit.extensions().get::<Outcome>(), Some(&Outcome::Hit));
    assert_eq!(version(&hit), "2");
    assert_eq!(body(hit).await.unwrap(), "the body");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_stands_in_for_an_origin_error_within_its_window() {
    let origin = Origin::new();
    origin.gate.add_permits(100);
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_millis(100))
            .stale_if_error(Duration::from_secs(60)),
    );
    let svc = Svc::new(layer.layer(origin.serve()));
    assert_eq!(answer(&svc).await, (Outcome::Leader, "answer 1".into()));
    tokio::time::sleep(Duration::from_millis(150)).await;

    // Past its freshness, with no stale-while-revalidate: the next request
    // asks the origin, which fails; the caller gets the stale answer.
    origin.status_from.store(2, Ordering::SeqCst);
    assert_eq!(answer(&svc).await, (Outcome::Stale, "answer 1".into()));
    assert_eq!(layer.stats().stale_on_error, 1);
    assert_eq!(origin.calls(), 2);
    // Once the origin answers again, so does the layer.
    origin.status_from.store(usize::MAX, Ordering::SeqCst);
    assert_eq!(answer(&svc).await, (Outcome::Leader, "answer 3".into()));
    assert_eq!(answer(&svc).await, (Outcome::Hit, "answer 3".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_stands_in_for_an_origin_that_times_out() {
    // Every call after the first hangs: its gate never opens.
    let origin = Origin::new();
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_millis(100))
            .stale_if_error(Duration::from_secs(60))
            .wait_timeout(Duration::from_millis(300)),
    );
    let svc = Svc::new(layer.layer(origin.serve()));
    assert_eq!(answer(&svc).await, (Outcome::Leader, "answer 1".into()));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (leader, follower) = tokio::join!(answer(&svc), answer(&svc));
    for got in [leader, follower] {
        assert_eq!(got, (Outcome::Stale, "answer 1".into()));
    }
    let stats = layer.stats();
    assert_eq!((stats.wait_timeouts, stats.stale_on_error), (1, 1));
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_answer_is_private_drops_the_stale_answer_from_every_instance() {
    let server = support::redis::RedisServer::start();
    let origin = Origin::new();
    origin.personal_from.store(2, Ordering::SeqCst);
    origin.gate.add_permits(100);
    let mut layers = Vec::new();
    let mut svcs = Vec::new();
    for _ in 0..2 {
        let backend = RedisBackend::connect(server.url()).await.unwrap();
        let layer = CoalesceLayer::new(config().backend(backend));
        svcs.push(Svc::new(layer.layer(origin.serve())));
        layers.push(layer);
    }
    assert_eq!(answer(&svcs[0]).await.0, Outcome::Leader);
    // Both instances now hold it in their near caches.
    assert_eq!(answer(&svcs[1]).await, (Outcome::Hit, "answer 1".into()));
    tokio::time::sleep(Duration::from_millis(150)).await;

    // Instance 0 refreshes it; the origin's answer is now private.
    assert_eq!(answer(&svcs[0]).await.0, Outcome::Stale);
    until(&layers[0], "the refresh", |_| {
        layers[0].flights_in_progress() == 0
    })
    .await;
    assert_eq!(origin.calls(), 2);
    // Give the news a moment to reach instance 1 (well under a millisecond
    // on loopback).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (outcome, text) = answer(&svcs[1]).await;
    assert_eq!(
        (outcome, text.as_str()),
        (Outcome::Pass, "answer 3"),
        "instance 1 served the dropped answer from its near cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_an_answer_in_its_stale_if_error_window_is_refetched_not_served() {
    let server = support::redis::RedisServer::start();
    let origin = Origin::new();
    origin.gate.add_permits(100);
    let backend = RedisBackend::connect(server.url()).await.unwrap();
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_millis(100))
            .stale_if_error(Duration::from_secs(60))
            .backend(backend),
    );
    let svc = Svc::new(layer.layer(origin.serve()));
    assert_eq!(answer(&svc).await, (Outcome::Leader, "answer 1".into()));
    tokio::time::sleep(Duration::from_millis(150)).await;

    // Stale, with no stale-while-revalidate: the origin is asked, and its
    // answer (not the stale one, as if it were a follower's) is given.
    assert_eq!(answer(&svc).await, (Outcome::Leader, "answer 2".into()));
    assert_eq!(origin.calls(), 2);
    assert_eq!(answer(&svc).await, (Outcome::Hit, "answer 2".into()));
    // And while the origin fails, the stale answer stands in for it.
    tokio::time::sleep(Duration::from_millis(150)).await;
    origin.status_from.store(3, Ordering::SeqCst);
    assert_eq!(answer(&svc).await, (Outcome::Stale, "answer 2".into()));
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_a_waiter_does_not_take_a_stale_answer_for_its_flights_answer() {
    // Two instances: each finds the stale answer, one refetches, the other
    // waits on its lease and must get the new answer, not the stale one
    // its own wait loop finds in Redis.
    let server = support::redis::RedisServer::start();
    let origin = Origin::new();
    let mut layers = Vec::new();
    let mut svcs = Vec::new();
    for _ in 0..2 {
        let backend = RedisBackend::connect(server.url()).await.unwrap();
        let layer = CoalesceLayer::new(
            CoalesceConfig::new()
                .ttl(Duration::from_millis(100))
                .stale_if_error(Duration::from_secs(60))
                .backend(backend),
        );
        svcs.push(Svc::new(layer.layer(origin.serve())));
        layers.push(layer);
    }
    assert_eq!(answer(&svcs[0]).await, (Outcome::Leader, "answer 1".into()));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (a, b, ()) = tokio::join!(answer(&svcs[0]), answer(&svcs[1]), async {
        until(&layers[0], "a flight", |_| origin.calls() == 2).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        origin.gate.add_permits(1);
    });
    assert_eq!(origin.calls(), 2, "one refetch among both instances");
    assert_eq!(a.1, "answer 2");
    assert_eq!(b.1, "answer 2");
}

/// Fixed ttl 100 ms with both stale windows; the origin's answers carry
/// `cache_control`, and from its second call on are `503`s.
async fn fixed_ttl_then_failing(cache_control: &'static str) -> (Outcome, u16, usize) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let origin = tower::service_fn(move |_req: Request<Full<Bytes>>| {
        let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let res = Response::builder()
                .status(if n == 1 { 200 } else { 503 })
                .header("cache-control", cache_control)
                .body(Full::new(Bytes::from(format!("answer {n}"))));
            Ok::<_, BoxError>(res.unwrap())
        }
    });
    let layer = CoalesceLayer::new(
        config()
            .stale_if_error(Duration::from_secs(60))
            .wait_timeout(Duration::from_secs(5)),
    );
    let svc = Svc::new(layer.layer(origin));
    assert_eq!(answer(&svc).await.0, Outcome::Leader);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let res = svc.clone().oneshot(get("/a")).await.unwrap();
    let outcome = *res.extensions().get::<Outcome>().unwrap();
    (outcome, res.status().as_u16(), calls.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_fixed_ttl_must_revalidate_and_s_maxage_still_forbid_serving_stale() {
    for forbids in ["must-revalidate", "proxy-revalidate", "s-maxage=5"] {
        // Neither served while refreshed, nor for the origin's error.
        assert_eq!(
            fixed_ttl_then_failing(forbids).await,
            (Outcome::Leader, 503, 2),
            "{forbids}"
        );
    }
    // Without them, the application's stale windows apply.
    let (outcome, status, _) = fixed_ttl_then_failing("max-age=5").await;
    assert_eq!((outcome, status), (Outcome::Stale, 200));
}

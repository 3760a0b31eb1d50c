//! Revalidation on the request path (RFC 9111 §4.3): an answer with
//! validators is kept past the windows in which it may be served, and the
//! flight that finds it asks the origin whether it changed — one
//! conditional request per burst, in one process and across instances,
//! answered `304` with no body. `no-cache` answers are stored this way, and
//! a `must-revalidate` answer whose revalidation fails is never served.

mod support;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::redis::RedisServer;
use support::{body, get, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{
    BoxError, CoalesceConfig, CoalesceLayer, Freshness, OriginFreshness, Outcome, RedisBackend,
};

const BODY_LEN: usize = 64 * 1024;

/// An origin whose answer has an `ETag` and the `Cache-Control` it is made
/// with; it answers a conditional request for that tag `304` with no body
/// (or, while `failing`, `503`), and counts what it sends.
#[derive(Clone, Default)]
struct Validating {
    full: Arc<AtomicUsize>,
    not_modified: Arc<AtomicUsize>,
    unconditional_after_first: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Validating {
    fn service(
        &self,
        cache_control: &'static str,
    ) -> impl tower::Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send,
    > + Clone
           + Send
           + 'static {
        let me = self.clone();
        tower::service_fn(move |req: Request<Full<Bytes>>| {
            let me = me.clone();
            async move {
                // Slow enough for a burst to gather behind one flight.
                tokio::time::sleep(Duration::from_millis(30)).await;
                let conditional = req.headers().get(header::IF_NONE_MATCH);
                let res = Response::builder()
                    .header(header::ETAG, "\"v1\"")
                    .header(header::CACHE_CONTROL, cache_control);
                if me.failing.load(Ordering::SeqCst) {
                    return Ok(res
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .body(Full::new(Bytes::from_static(b"down")))
                        .unwrap());
                }
                if conditional.is_some_and(|tag| tag == "\"v1\"") {
                    me.not_modified.fetch_add(1, Ordering::SeqCst);
                    return Ok(res
                        .status(StatusCode::NOT_MODIFIED)
                        .body(Full::default())
                        .unwrap());
                }
                if me.full.fetch_add(1, Ordering::SeqCst) > 0 {
                    me.unconditional_after_first.fetch_add(1, Ordering::SeqCst);
                }
                me.bytes.fetch_add(BODY_LEN, Ordering::SeqCst);
                Ok(res
                    .body(Full::new(Bytes::from(vec![b'x'; BODY_LEN])))
                    .unwrap())
            }
        })
    }

    fn counts(&self) -> (usize, usize, usize) {
        (
            self.full.load(Ordering::SeqCst),
            self.not_modified.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }
}

fn origin_freshness() -> CoalesceConfig {
    CoalesceConfig::new().freshness(Freshness::Origin(OriginFreshness::new()))
}

/// Sends `n` requests at once through `instances` in turn; each must be a
/// `200` with the whole body.
async fn burst(instances: &[Svc], n: usize) {
    let calls: Vec<_> = (0..n)
        .map(|i| tokio::spawn(instances[i % instances.len()].clone().oneshot(get("/doc"))))
        .collect();
    for call in calls {
        let res = call.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body(res).await.unwrap().len(), BODY_LEN);
    }
}

async fn a_must_revalidate_answer_costs_one_conditional_request_per_staleness(
    instances: &[Svc],
    origin: &Validating,
) {
    burst(instances, 50).await;
    assert_eq!(origin.counts(), (1, 0, BODY_LEN));
    for period in 1..=2 {
        // Stale, and it may not be served stale.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        burst(instances, 100).await;
        assert_eq!(
            origin.counts(),
            (1, period, BODY_LEN),
            "one conditional request, answered with no body, in period {period}"
        );
    }
    assert_eq!(origin.unconditional_after_first.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_must_revalidate_answer_is_revalidated_not_fetched_again_in_one_process() {
    let origin = Validating::default();
    let layer = CoalesceLayer::new(origin_freshness());
    let svc = Svc::new(layer.layer(origin.service("max-age=1, must-revalidate")));
    a_must_revalidate_answer_costs_one_conditional_request_per_staleness(&[svc], &origin).await;
    assert_eq!(layer.stats().revalidations, 2);
}

#[tokio::test]
async fn a_must_revalidate_answer_is_revalidated_once_across_instances() {
    let server = RedisServer::start();
    let origin = Validating::default();
    let mut instances = Vec::new();
    for _ in 0..3 {
        let backend = RedisBackend::connect(server.url()).await.unwrap();
        let layer = CoalesceLayer::new(origin_freshness().backend(backend));
        instances.push(Svc::new(
            layer.layer(origin.service("max-age=1, must-revalidate")),
        ));
    }
    a_must_revalidate_answer_costs_one_conditional_request_per_staleness(&instances, &origin).await;
}

#[tokio::test]
async fn no_cache_answers_are_stored_and_revalidated_at_every_use() {
    let origin = Validating::default();
    let layer = CoalesceLayer::new(origin_freshness());
    let svc = Svc::new(layer.layer(origin.service("no-cache")));
    burst(std::slice::from_ref(&svc), 20).await;
    assert_eq!(origin.counts(), (1, 0, BODY_LEN));
    // Every later use asks the origin; a burst asks once.
    let res = svc.clone().oneshot(get("/doc")).await.unwrap();
    assert_eq!(res.headers()[header::ETAG], "\"v1\"");
    assert_eq!(body(res).await.unwrap().len(), BODY_LEN);
    assert_eq!(origin.counts(), (1, 1, BODY_LEN));
    burst(std::slice::from_ref(&svc), 50).await;
    assert_eq!(origin.counts(), (1, 2, BODY_LEN));
    // With field names, no-cache counts as unqualified.
    let origin = Validating::default();
    let layer = CoalesceLayer::new(origin_freshness());
    let svc = Svc::new(layer.layer(origin.service("max-age=60, no-cache=\"x-debug\"")));
    for _ in 0..3 {
        svc.clone().oneshot(get("/doc")).await.unwrap();
    }
    assert_eq!(origin.counts(), (1, 2, BODY_LEN));
}

#[tokio::test]
async fn a_failed_revalidation_of_a_must_revalidate_answer_never_serves_it() {
    let origin = Validating::default();
    let layer = CoalesceLayer::new(origin_freshness());
    let svc = Svc::new(layer.layer(origin.service("max-age=1, must-revalidate")));
    burst(std::slice::from_ref(&svc), 1).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    origin.failing.store(true, Ordering::SeqCst);
    // The origin's 5xx, as it sent it, to every caller of the flight.
    let calls: Vec<_> = (0..20)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/doc"))))
        .collect();
    for call in calls {
        let res = call.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(res).await.unwrap(), "down");
    }
    // Kept all the same: the next flight revalidates it.
    origin.failing.store(false, Ordering::SeqCst);
    let res = svc.clone().oneshot(get("/doc")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body(res).await.unwrap().len(), BODY_LEN);
    assert_eq!(origin.counts(), (1, 1, BODY_LEN));
}

#[tokio::test]
async fn without_retention_a_stale_answer_is_fetched_whole_again() {
    let origin = Validating::default();
    let config = origin_freshness().revalidation_retention(Duration::ZERO);
    let layer = CoalesceLayer::new(config);
    let svc = Svc::new(layer.layer(origin.service("max-age=1, must-revalidate")));
    burst(std::slice::from_ref(&svc), 1).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let res = svc.clone().oneshot(get("/doc")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Leader));
    assert_eq!(origin.counts(), (2, 0, 2 * BODY_LEN));
}

#[tokio::test]
async fn max_stale_takes_a_stale_answer_unless_the_origin_forbids_it() {
    let cases = [
        ("max-age=1", "max-stale=60", Outcome::Stale),
        ("max-age=1", "max-stale", Outcome::Stale),
        // Stale by more than it takes.
        ("max-age=1", "max-stale=0", Outcome::Leader),
        (
            "max-age=1, must-revalidate",
            "max-stale=60",
            Outcome::Leader,
        ),
        ("max-age=1, proxy-revalidate", "max-stale", Outcome::Leader),
    ];
    for (stored, asked, expected) in cases {
        let origin = Validating::default();
        let layer = CoalesceLayer::new(origin_freshness());
        let svc = Svc::new(layer.layer(origin.service(stored)));
        burst(std::slice::from_ref(&svc), 1).await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let req = Request::get("/doc")
            .header(header::CACHE_CONTROL, asked)
            .body(Full::default())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(
            res.extensions().get::<Outcome>(),
            Some(&expected),
            "{stored} / {asked}"
        );
        assert_eq!(body(res).await.unwrap().len(), BODY_LEN);
    }
}

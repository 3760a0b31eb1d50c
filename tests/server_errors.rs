//! Server errors with explicit freshness, stored by choice
//! (`store_server_errors`): never by default, only with explicit freshness,
//! and never in place of an answer that may stand in for an error.

mod support;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{body, get, Origin};
use tower::{Layer, ServiceExt};
use tower_coalesce::{
    BoxError, CoalesceConfig, CoalesceLayer, Freshness, OriginFreshness, Outcome,
};

/// A layer taking freshness from the origin, storing server errors or not.
fn layer(store_server_errors: bool) -> CoalesceLayer {
    CoalesceLayer::new(
        CoalesceConfig::new()
            .freshness(Freshness::Origin(OriginFreshness::new()))
            .store_server_errors(store_server_errors),
    )
}

/// An origin answering the status `status` holds, with `cache_control`.
fn answering(
    origin: &Origin,
    status: Arc<AtomicU16>,
    cache_control: &'static str,
) -> impl tower::Service<
    http::Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future: Send,
> + Clone {
    origin.serve(move |_| {
        let status = StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
        async move {
            Ok::<_, BoxError>(
                Response::builder()
                    .status(status)
                    .header("cache-control", cache_control)
                    .body(Full::new(Bytes::from(status.as_str().to_owned())))
                    .unwrap(),
            )
        }
    })
}

/// The outcomes of two requests one after the other.
async fn twice(
    svc: impl tower::Service<
            http::Request<Full<Bytes>>,
            Response = Response<tower_coalesce::CoalesceBody<Full<Bytes>>>,
            Error = BoxError,
        > + Clone,
) -> [(Outcome, StatusCode); 2] {
    let mut seen = Vec::new();
    for _ in 0..2 {
        let res = svc.clone().oneshot(get("/status")).await.unwrap();
        seen.push((*res.extensions().get::<Outcome>().unwrap(), res.status()));
        body(res).await.unwrap();
    }
    [seen[0], seen[1]]
}

#[tokio::test]
async fn a_server_error_with_explicit_freshness_is_stored_only_when_asked() {
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    for (store, cache_control, second) in [
        (false, "max-age=60", Outcome::Leader),
        (true, "max-age=60", Outcome::Hit),
        (true, "s-maxage=60", Outcome::Hit),
        // No explicit freshness: not stored, even when asked.
        (true, "public", Outcome::Leader),
    ] {
        let origin = Origin::open();
        let status = Arc::new(AtomicU16::new(503));
        let svc = layer(store).layer(answering(&origin, status, cache_control));
        let seen = twice(svc).await;
        assert_eq!(
            seen,
            [(Outcome::Leader, unavailable), (second, unavailable)],
            "store_server_errors({store}), {cache_control}"
        );
    }
}

#[tokio::test]
async fn a_server_error_never_replaces_an_answer_that_may_stand_in_for_it() {
    let origin = Origin::open();
    let status = Arc::new(AtomicU16::new(200));
    let layer = layer(true);
    let svc = layer.layer(answering(
        &origin,
        status.clone(),
        "max-age=1, stale-if-error=60",
    ));
    let res = svc.clone().oneshot(get("/status")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // The origin starts failing, with explicit freshness; the stored answer
    // goes stale.
    status.store(503, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for _ in 0..2 {
        let res = svc.clone().oneshot(get("/status")).await.unwrap();
        assert_eq!(
            (res.status(), *res.extensions().get::<Outcome>().unwrap()),
            (StatusCode::OK, Outcome::Stale),
            "the stale answer stands in for the error, and stays stored"
        );
        body(res).await.unwrap();
    }
    assert_eq!(
        origin.calls(),
        3,
        "each stale answer past its freshness asks the origin again"
    );
}

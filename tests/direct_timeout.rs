//! Requests the layer sends on for one caller alone — bypassed (no key,
//! credentials, unsafe methods) and pass-through — are bounded by
//! `direct_timeout`: an inner service that never answers does not hold
//! its caller forever.

mod support;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use std::time::{Duration, Instant};
use support::{get, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer, FlightError, FlightErrorKind, Outcome};

/// Answers `GET /private` at once with `Set-Cookie` (its key then passes),
/// and never answers anything else after the first `/private`.
fn hanging() -> impl support::OriginService {
    let first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    tower::service_fn(move |req: Request<Full<Bytes>>| {
        let first = req.uri().path() == "/private"
            && first.swap(false, std::sync::atomic::Ordering::SeqCst);
        async move {
            if !first {
                std::future::pending::<()>().await;
            }
            let res = Response::builder()
                .header(header::SET_COOKIE, "sid=1")
                .body(Full::new(Bytes::from_static(b"mine")))
                .unwrap();
            Ok(res)
        }
    })
}

async fn bounded(svc: &Svc, req: Request<Full<Bytes>>) -> (Outcome, StatusCode, Duration) {
    let start = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(5), svc.clone().oneshot(req))
        .await
        .expect("the call was not bounded")
        .unwrap();
    let error = res.extensions().get::<FlightError>().map(FlightError::kind);
    assert_eq!(error, Some(FlightErrorKind::OriginTimeout));
    let outcome = *res.extensions().get::<Outcome>().unwrap();
    (outcome, res.status(), start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_calls_that_hang_end_at_the_direct_timeout() {
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .direct_timeout(Duration::from_millis(200)),
    );
    let svc = Svc::new(layer.layer(hanging()));
    let credentialed = Request::get("/a")
        .header(header::AUTHORIZATION, "Bearer 1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let write = Request::post("/a").body(Full::new(Bytes::new())).unwrap();
    for req in [credentialed, write] {
        let (outcome, status, took) = bounded(&svc, req).await;
        assert_eq!(
            (outcome, status),
            (Outcome::Bypass, StatusCode::GATEWAY_TIMEOUT)
        );
        assert!(took >= Duration::from_millis(200), "{took:?}");
    }
    // A key whose answers cannot be shared: passed, and bounded too.
    let res = svc.clone().oneshot(get("/private")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Leader));
    let (outcome, status, _) = bounded(&svc, get("/private")).await;
    assert_eq!(
        (outcome, status),
        (Outcome::Pass, StatusCode::GATEWAY_TIMEOUT)
    );
}

#[tokio::test]
async fn a_grpc_direct_call_that_hangs_ends_with_deadline_exceeded() {
    let layer = CoalesceLayer::new(CoalesceConfig::new().direct_timeout(Duration::from_millis(50)));
    let svc = Svc::new(layer.layer(hanging()));
    let req = Request::post("/pkg.Service/Method")
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "4");
}

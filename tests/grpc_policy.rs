//! gRPC over the layer: errors travel as HTTP 200 with a `grpc-status`, so the
//! layer reads that status to decide what may be stored, and answers a gRPC
//! caller's failures in gRPC's own terms.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use std::time::Duration;
use support::{until, Origin};
use tower::{Layer, ServiceExt};
use tower_coalesce::{BoxError, CoalesceConfig, CoalesceLayer, Key, Outcome};

fn grpc_call(method: &str) -> Request<Full<Bytes>> {
    Request::post(method)
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02\x08\x07")))
        .unwrap()
}

/// gRPC calls are `POST`s: the layer coalesces them only when told to.
fn grpc_config() -> CoalesceConfig {
    CoalesceConfig::new().methods([http::Method::POST])
}

/// Keys gRPC calls by method path (the tests send one message per method).
fn by_path(req: &Request<Full<Bytes>>) -> Option<Key> {
    Some(Key::new(Bytes::copy_from_slice(
        req.uri().path().as_bytes(),
    )))
}

type Frames =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>>>;

/// A gRPC answer: one message, then `grpc-status` in the trailers.
fn answer_with_status(status: &'static str) -> Response<Frames> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", status.parse().unwrap());
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02\x08\x07"))),
        Ok(Frame::trailers(trailers)),
    ];
    Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap()
}

#[tokio::test]
async fn a_grpc_error_in_the_trailers_reaches_the_flight_but_is_not_stored() {
    let origin = Origin::gated();
    let layer = CoalesceLayer::builder(grpc_config().ttl(Duration::from_secs(60)))
        .extractor(by_path)
        .build()
        .unwrap();
    let svc = layer.layer(origin.serve(|_| async { Ok::<_, BoxError>(answer_with_status("14")) }));
    let calls: Vec<_> = (0..5)
        .map(|_| tokio::spawn(svc.clone().oneshot(grpc_call("/shop.Catalog/Get"))))
        .collect();
    until(&layer, "the followers", |s| s.followers == 4).await;
    origin.open_gate();
    for call in calls {
        let collected = call
            .await
            .unwrap()
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");
    }
    assert_eq!(origin.calls(), 1, "the flight shared the error");
    assert_eq!(layer.stats().stored, 0, "a gRPC error is never stored");
    let again = svc
        .clone()
        .oneshot(grpc_call("/shop.Catalog/Get"))
        .await
        .unwrap();
    assert_eq!(again.extensions().get::<Outcome>(), Some(&Outcome::Leader));
    assert_eq!(origin.calls(), 2, "the next call tries the origin again");
}

#[tokio::test]
async fn a_trailers_only_grpc_error_is_not_stored_and_grpc_ok_is() {
    let origin = Origin::open();
    let layer = CoalesceLayer::builder(grpc_config().ttl(Duration::from_secs(60)))
        .extractor(by_path)
        .build()
        .unwrap();
    let svc = layer.layer(origin.serve(|req: Request<Full<Bytes>>| async move {
        if req.uri().path().ends_with("Missing") {
            // Trailers-only: the status is in the head, the body is empty.
            let res = Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "5")
                .body(StreamBody::new(futures_util::stream::iter(Vec::new())))
                .unwrap();
            return Ok::<_, BoxError>(res);
        }
        Ok(answer_with_status("0"))
    }));
    for _ in 0..2 {
        let res = svc
            .clone()
            .oneshot(grpc_call("/shop.Catalog/Missing"))
            .await
            .unwrap();
        assert_eq!(res.headers()["grpc-status"], "5");
    }
    assert_eq!(origin.calls(), 2, "the error was not stored");
    for _ in 0..2 {
        let res = svc
            .clone()
            .oneshot(grpc_call("/shop.Catalog/Get"))
            .await
            .unwrap();
        let collected = res.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    }
    assert_eq!(origin.calls(), 3, "an OK answer was stored and then hit");
    assert_eq!(layer.stats().hits, 1);
}

#[tokio::test]
async fn grpc_callers_get_their_failures_as_grpc_statuses() {
    let never = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        std::future::pending::<Result<Response<Full<Bytes>>, BoxError>>().await
    });
    let layer = CoalesceLayer::builder(
        // GET as well, for the plain HTTP caller below.
        grpc_config()
            .methods([http::Method::POST, http::Method::GET])
            .wait_timeout(Duration::from_millis(100)),
    )
    .extractor(by_path)
    .build()
    .unwrap();
    let svc = layer.layer(never);
    let leader = tokio::spawn(svc.clone().oneshot(grpc_call("/shop.Catalog/Slow")));
    until(&layer, "the flight", |s| s.origin_calls == 1).await;
    let follower = tokio::spawn(svc.clone().oneshot(grpc_call("/shop.Catalog/Slow")));
    for res in [
        leader.await.unwrap().unwrap(),
        follower.await.unwrap().unwrap(),
    ] {
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "gRPC carries its status in grpc-status"
        );
        assert_eq!(res.headers()["content-type"], "application/grpc");
        assert_eq!(res.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
        assert!(res.headers().contains_key("grpc-message"));
    }
    // A plain HTTP caller of the same kind of flight gets the HTTP status.
    let http_call = Request::get("/plain")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = svc.clone().oneshot(http_call).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(!res.headers().contains_key("grpc-status"));
}

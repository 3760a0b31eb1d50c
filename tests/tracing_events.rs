//! The layer's tracing: a span per flight and events for each way a request
//! goes, carrying the key's fingerprint — never the key, which may hold a
//! credential.

mod support;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::Full;
use support::{echo_path, until, Captured, Origin};
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer, HttpKey, Key};

#[tokio::test]
async fn flights_are_traced_by_fingerprint_and_never_by_key() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let origin = Origin::gated();
    let extractor = HttpKey::new().vary(header::AUTHORIZATION);
    let layer = CoalesceLayer::builder(CoalesceConfig::new())
        .extractor(extractor.clone())
        .build()
        .unwrap();
    let svc = layer.layer(origin.serve(echo_path));
    let call = || {
        Request::get("/me")
            .header(header::AUTHORIZATION, "Bearer secret-token-42")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let leader = tokio::spawn(svc.clone().oneshot(call()));
    until(&layer, "the flight", |s| s.origin_calls == 1).await;
    let follower = tokio::spawn(svc.clone().oneshot(call()));
    until(&layer, "the follower", |s| s.followers == 1).await;
    origin.open_gate();
    leader.await.unwrap().unwrap();
    follower.await.unwrap().unwrap();
    let bypass = Request::post("/x").body(Full::new(Bytes::new())).unwrap();
    svc.clone().oneshot(bypass).await.unwrap();

    let text = captured.text();
    let key: Key = tower_coalesce::KeyExtractor::extract(&extractor, &call()).unwrap();
    let fingerprint = key.fingerprint().to_string();
    assert!(
        text.contains("coalesce.flight"),
        "a span per flight:\n{text}"
    );
    assert!(text.contains("origin answered"), "{text}");
    assert!(text.contains("following a flight"), "{text}");
    assert!(text.contains("bypass"), "{text}");
    assert!(
        text.contains(&fingerprint),
        "events carry the fingerprint:\n{text}"
    );
    assert!(
        !text.contains("secret-token-42"),
        "a credential reached the logs:\n{text}"
    );
}

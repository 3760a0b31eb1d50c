//! HTTP caching rules across instances sharing a real redis-server: what one
//! instance stores by a targeted field or by `store_server_errors` serves
//! the others, and a `no-store` request stores nothing anywhere.

mod support;

use bytes::Bytes;
use http::{header, HeaderName, Request, Response, StatusCode};
use http_body_util::Full;
use support::redis::RedisServer;
use support::{body, Origin, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{
    BoxError, CoalesceConfig, CoalesceLayer, Freshness, OriginFreshness, Outcome, RedisBackend,
};

/// Two instances on one Redis, their origin answering with `status` and
/// `headers`.
async fn instances(
    server: &RedisServer,
    origin: &Origin,
    config: impl Fn() -> CoalesceConfig,
    status: StatusCode,
    headers: &'static [(&'static str, &'static str)],
) -> [Svc; 2] {
    let mut svcs = Vec::new();
    for _ in 0..2 {
        let backend = RedisBackend::connect(server.url()).await.unwrap();
        let layer = CoalesceLayer::new(config().backend(backend));
        let svc = layer.layer(origin.serve(move |_| async move {
            let mut res = Response::builder().status(status);
            for (name, value) in headers {
                res = res.header(*name, *value);
            }
            Ok::<_, BoxError>(res.body(Full::new(Bytes::from_static(b"answer"))).unwrap())
        }));
        svcs.push(Svc::new(svc));
    }
    [svcs.remove(0), svcs.remove(0)]
}

fn origin_freshness() -> CoalesceConfig {
    CoalesceConfig::new().freshness(Freshness::Origin(OriginFreshness::new()))
}

async fn outcome(svc: &Svc, request_cache_control: Option<&str>) -> Outcome {
    let mut req = Request::get("/r");
    if let Some(cc) = request_cache_control {
        req = req.header(header::CACHE_CONTROL, cc);
    }
    let call = svc.clone().oneshot(req.body(Full::default()).unwrap());
    let res = call.await.unwrap();
    let outcome = *res.extensions().get::<Outcome>().unwrap();
    assert_eq!(body(res).await.unwrap(), "answer");
    outcome
}

#[tokio::test]
async fn an_answer_stored_by_its_targeted_field_serves_every_instance() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let config = || {
        origin_freshness().targeted_cache_control([HeaderName::from_static("cdn-cache-control")])
    };
    let headers = &[
        ("cache-control", "no-store"),
        ("cdn-cache-control", "max-age=60"),
    ];
    let [a, b] = instances(&server, &origin, config, StatusCode::OK, headers).await;
    assert_eq!(outcome(&a, None).await, Outcome::Leader);
    assert_eq!(outcome(&b, None).await, Outcome::Hit);
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_server_error_stored_by_choice_serves_every_instance() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let config = || origin_freshness().store_server_errors(true);
    let headers = &[("cache-control", "max-age=60")];
    let [a, b] = instances(
        &server,
        &origin,
        config,
        StatusCode::SERVICE_UNAVAILABLE,
        headers,
    )
    .await;
    assert_eq!(outcome(&a, None).await, Outcome::Leader);
    assert_eq!(outcome(&b, None).await, Outcome::Hit);
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_no_store_request_stores_nothing_in_any_instance() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let headers = &[("cache-control", "max-age=60")];
    let [a, b] = instances(&server, &origin, origin_freshness, StatusCode::OK, headers).await;
    assert_eq!(outcome(&b, Some("no-store")).await, Outcome::Pass);
    // Nothing of it was stored: the next request leads, and then it is.
    assert_eq!(outcome(&a, None).await, Outcome::Leader);
    assert_eq!(outcome(&b, None).await, Outcome::Hit);
    // A no-store request may be answered from storage.
    assert_eq!(outcome(&a, Some("no-store")).await, Outcome::Hit);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn must_understand_and_lenient_dates_hold_across_instances() {
    let server = RedisServer::start();
    // Understood: stored in spite of the no-store beside it.
    let origin = Origin::open();
    let headers = &[("cache-control", "max-age=60, must-understand, no-store")];
    let [a, b] = instances(&server, &origin, origin_freshness, StatusCode::OK, headers).await;
    assert_eq!(outcome(&a, None).await, Outcome::Leader);
    assert_eq!(outcome(&b, None).await, Outcome::Hit);
    // An Expires a minute ahead, with a weekday that does not match its
    // date and its month in capitals: read, as the mainstream caches do.
    let now = std::time::SystemTime::now();
    let date: &'static str = Box::leak(httpdate::fmt_http_date(now).into_boxed_str());
    let expires = httpdate::fmt_http_date(now + std::time::Duration::from_secs(60));
    let weekday = &expires[..3];
    let wrong = if weekday == "Mon" { "Tue" } else { "Mon" };
    let month = &expires[8..11];
    let expires =
        expires
            .replacen(weekday, wrong, 1)
            .replacen(month, &month.to_ascii_uppercase(), 1);
    let expires: &'static str = Box::leak(expires.into_boxed_str());
    let headers: &'static [(&'static str, &'static str)] =
        Box::leak(vec![("date", date), ("expires", expires)].into_boxed_slice());
    let origin = Origin::open();
    let server = RedisServer::start();
    let [a, b] = instances(&server, &origin, origin_freshness, StatusCode::OK, headers).await;
    assert_eq!(
        outcome(&a, None).await,
        Outcome::Leader,
        "Expires: {expires}"
    );
    assert_eq!(outcome(&b, None).await, Outcome::Hit, "Expires: {expires}");
    assert_eq!(origin.calls(), 1);
}

//! Invariant 6: an answer reaches only the requests it answers. A caller's
//! own validators, range and method shape its own answer, never anyone
//! else's; credentials, methods and unreadable sharing headers are judged by
//! the layer whatever the extractor.

mod support;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use http_body_util::Full;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{body, until, Origin};
use tower::{Layer, ServiceExt};
use tower_coalesce::{BoxError, CoalesceConfig, CoalesceLayer, Key, Outcome};

const ETAG: &str = "\"v1\"";
const LAST_MODIFIED: &str = "Tue, 01 Dec 2026 10:00:00 GMT";
const PAGE: &str = "0123456789";

/// What the origin was asked: method and headers of each call.
type Seen = Arc<Mutex<Vec<(Method, HeaderMap)>>>;

/// An origin that answers `PAGE` with validators, and records what it saw.
fn page_origin(
    origin: &Origin,
    seen: &Seen,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let seen = seen.clone();
    origin.serve(move |req: Request<Full<Bytes>>| {
        seen.lock()
            .unwrap()
            .push((req.method().clone(), req.headers().clone()));
        async move {
            Ok(Response::builder()
                .header(header::ETAG, ETAG)
                .header(header::LAST_MODIFIED, LAST_MODIFIED)
                .header(header::DATE, "Tue, 01 Dec 2026 11:00:00 GMT")
                .header(header::CONTENT_LENGTH, PAGE.len())
                .body(Full::new(Bytes::from_static(PAGE.as_bytes())))
                .unwrap())
        }
    })
}

fn get(headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    request(Method::GET, headers)
}

fn request(method: Method, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method(method).uri("/page");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::new())).unwrap()
}

/// Starts `first` as a flight's leader, then `rest` as its followers, opens
/// the gate and returns every answer: status and body, in order.
async fn burst(
    layer: &CoalesceLayer,
    origin: &Origin,
    seen: &Seen,
    first: Request<Full<Bytes>>,
    rest: Vec<Request<Full<Bytes>>>,
) -> Vec<(StatusCode, HeaderMap, Bytes)> {
    let svc = layer.layer(page_origin(origin, seen));
    let before = layer.stats().followers;
    let mut calls = vec![tokio::spawn(svc.clone().oneshot(first))];
    until(layer, "the leader's call", |s| s.origin_calls >= 1).await;
    let n = rest.len() as u64;
    calls.extend(
        rest.into_iter()
            .map(|r| tokio::spawn(svc.clone().oneshot(r))),
    );
    until(layer, "the followers", |s| s.followers == before + n).await;
    origin.open_gate();
    let mut out = Vec::new();
    for call in calls {
        let res = call.await.unwrap().unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        out.push((status, headers, body(res).await.unwrap()));
    }
    out
}

#[tokio::test]
async fn a_conditional_leader_gets_its_304_and_plain_followers_the_page() {
    let (origin, seen) = (Origin::gated(), Seen::default());
    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let answers = burst(
        &layer,
        &origin,
        &seen,
        get(&[("if-none-match", ETAG)]),
        vec![
            get(&[]),
            get(&[("if-modified-since", LAST_MODIFIED)]),
            get(&[]),
        ],
    )
    .await;
    assert_eq!(answers[0].0, StatusCode::NOT_MODIFIED);
    assert!(answers[0].2.is_empty());
    assert_eq!(answers[0].1["etag"], ETAG);
    assert_eq!(
        (answers[1].0, &answers[1].2[..]),
        (StatusCode::OK, PAGE.as_bytes())
    );
    assert_eq!(answers[2].0, StatusCode::NOT_MODIFIED);
    assert_eq!(
        (answers[3].0, &answers[3].2[..]),
        (StatusCode::OK, PAGE.as_bytes())
    );
    // The flight asked for the whole representation.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].1.contains_key("if-none-match"));
    // What was stored is the page, never the 304.
    let svc = layer.layer(page_origin(&origin, &Seen::default()));
    let later = svc.clone().oneshot(get(&[])).await.unwrap();
    assert_eq!(later.extensions().get::<Outcome>(), Some(&Outcome::Hit));
    assert_eq!(body(later).await.unwrap(), PAGE);
    let hit = svc
        .oneshot(get(&[("if-none-match", "W/\"v1\"")]))
        .await
        .unwrap();
    assert_eq!(hit.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_failed_precondition_is_the_callers_412_alone() {
    let (origin, seen) = (Origin::gated(), Seen::default());
    let layer = CoalesceLayer::new(CoalesceConfig::new());
    let answers = burst(
        &layer,
        &origin,
        &seen,
        get(&[("if-match", "\"other\"")]),
        vec![
            get(&[]),
            get(&[("if-unmodified-since", "Tue, 01 Dec 2026 09:00:00 GMT")]),
            get(&[("if-match", ETAG)]),
        ],
    )
    .await;
    let statuses: Vec<_> = answers.iter().map(|a| a.0).collect();
    assert_eq!(
        statuses,
        [
            StatusCode::PRECONDITION_FAILED,
            StatusCode::OK,
            StatusCode::PRECONDITION_FAILED,
            StatusCode::OK
        ]
    );
    assert_eq!(answers[1].2, PAGE);
    assert!(!seen.lock().unwrap()[0].1.contains_key("if-match"));
}

#[tokio::test]
async fn a_range_request_joins_the_flight_and_gets_its_own_206_or_416() {
    let (origin, seen) = (Origin::gated(), Seen::default());
    let layer = CoalesceLayer::new(CoalesceConfig::new());
    let answers = burst(
        &layer,
        &origin,
        &seen,
        get(&[("range", "bytes=999-")]),
        vec![
            get(&[]),
            get(&[("range", "bytes=2-4")]),
            get(&[("range", "bytes=0-1"), ("if-range", "\"stale\"")]),
        ],
    )
    .await;
    assert_eq!(answers[0].0, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(answers[0].1["content-range"], "bytes */10");
    assert_eq!(
        (answers[1].0, &answers[1].2[..]),
        (StatusCode::OK, PAGE.as_bytes())
    );
    assert_eq!(
        (answers[2].0, &answers[2].2[..]),
        (StatusCode::PARTIAL_CONTENT, &b"234"[..])
    );
    assert_eq!(answers[2].1["content-range"], "bytes 2-4/10");
    assert_eq!(answers[3].2, PAGE, "If-Range did not match: the whole page");
    assert!(!seen.lock().unwrap()[0].1.contains_key("range"));

    // Nothing about the key became pass-through.
    assert_eq!((layer.stats().passed_flights, layer.stats().passes), (0, 0));
}

#[tokio::test]
async fn a_burst_of_plain_gets_after_range_requests_costs_one_call() {
    let (origin, seen) = (Origin::gated(), Seen::default());
    let layer = CoalesceLayer::new(CoalesceConfig::new());
    let first = burst(
        &layer,
        &origin,
        &seen,
        get(&[("range", "bytes=0-3")]),
        vec![],
    )
    .await;
    assert_eq!(first[0].0, StatusCode::PARTIAL_CONTENT);
    let (gated, seen) = (Origin::gated(), Seen::default());
    let answers = burst(&layer, &gated, &seen, get(&[]), vec![get(&[]); 19]).await;
    assert!(answers.iter().all(|a| a.0 == StatusCode::OK && a.2 == PAGE));
    assert_eq!(gated.calls(), 1, "20 concurrent GETs after a Range request");
}

#[tokio::test]
async fn on_a_pass_through_key_the_callers_conditions_reach_the_origin() {
    let seen = Seen::default();
    let recorded = seen.clone();
    let origin = Origin::open();
    // Private answers: the key passes after the first.
    let svc_fn = move |req: Request<Full<Bytes>>| {
        recorded
            .lock()
            .unwrap()
            .push((req.method().clone(), req.headers().clone()));
        async move {
            let status = if req.headers().contains_key("range") {
                206
            } else {
                200
            };
            Ok::<_, BoxError>(
                Response::builder()
                    .status(status)
                    .header(header::CACHE_CONTROL, "private")
                    .body(Full::new(Bytes::from_static(b"mine")))
                    .unwrap(),
            )
        }
    };
    let layer = CoalesceLayer::new(CoalesceConfig::new());
    let svc = layer.layer(origin.serve(svc_fn));
    svc.clone().oneshot(get(&[])).await.unwrap();
    let res = svc
        .oneshot(get(&[("range", "bytes=0-1"), ("if-none-match", "\"x\"")]))
        .await
        .unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Pass));
    assert_eq!(
        res.status(),
        StatusCode::PARTIAL_CONTENT,
        "the origin's own 206"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen[1].1["range"], "bytes=0-1");
    assert_eq!(seen[1].1["if-none-match"], "\"x\"");
}

#[tokio::test]
async fn a_private_answer_still_honours_its_leaders_range_and_validators() {
    // The flight sent no range; the answer turned out private: the leader's
    // caller gets its range of the streamed body, as the origin would.
    let (origin, seen) = (Origin::gated(), Seen::default());
    let recorded = seen.clone();
    let svc_fn = move |req: Request<Full<Bytes>>| {
        recorded
            .lock()
            .unwrap()
            .push((req.method().clone(), req.headers().clone()));
        async move {
            Ok::<_, BoxError>(
                Response::builder()
                    .header(header::SET_COOKIE, "sid=1")
                    .header(header::ETAG, ETAG)
                    .header(header::CONTENT_LENGTH, PAGE.len())
                    .body(Full::new(Bytes::from_static(PAGE.as_bytes())))
                    .unwrap(),
            )
        }
    };
    let layer = CoalesceLayer::new(CoalesceConfig::new());
    let svc = layer.layer(origin.serve(svc_fn));
    origin.open_gate();
    let res = svc
        .clone()
        .oneshot(get(&[("range", "bytes=7-")]))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(res.headers()["content-range"], "bytes 7-9/10");
    assert_eq!(res.headers()["set-cookie"], "sid=1");
    assert_eq!(body(res).await.unwrap(), "789");
    assert!(!seen.lock().unwrap()[0].1.contains_key("range"));
}

/// A leader and one follower of a plain GET through `layer` to `answer`:
/// the follower's outcome.
async fn leader_and_follower<F, Fut>(layer: &CoalesceLayer, origin: &Origin, answer: F) -> Outcome
where
    F: Fn(Request<Full<Bytes>>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send + 'static,
{
    let svc = layer.layer(origin.serve(answer));
    let leader = tokio::spawn(svc.clone().oneshot(get(&[])));
    until(layer, "the leader's call", |s| s.origin_calls == 1).await;
    let follower = tokio::spawn(svc.clone().oneshot(get(&[])));
    until(layer, "the follower", |s| s.followers == 1).await;
    origin.open_gate();
    leader.await.unwrap().unwrap();
    let follower = follower.await.unwrap().unwrap();
    *follower.extensions().get::<Outcome>().unwrap()
}

#[tokio::test]
async fn answers_made_for_one_callers_conditions_are_never_shared_or_stored() {
    // An origin that answers 304 even to a request without validators.
    let origin = Origin::gated();
    let svc_fn = |_req: Request<Full<Bytes>>| async {
        Ok::<_, BoxError>(
            Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .header(header::ETAG, ETAG)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    };
    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let follower = leader_and_follower(&layer, &origin, svc_fn).await;
    assert_eq!(follower, Outcome::Pass);
    assert_eq!(origin.calls(), 2, "the follower asked for itself");
    assert_eq!(layer.stats().stored, 0);
}

#[tokio::test]
async fn a_head_leader_asks_for_get_and_only_get_callers_get_the_body() {
    let (origin, seen) = (Origin::gated(), Seen::default());
    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let answers = burst(
        &layer,
        &origin,
        &seen,
        request(Method::HEAD, &[]),
        vec![get(&[]), request(Method::HEAD, &[])],
    )
    .await;
    assert_eq!(
        seen.lock().unwrap()[0].0,
        Method::GET,
        "the HEAD leader asked for GET"
    );
    assert_eq!(answers[0].2, "", "HEAD: no body");
    assert_eq!(answers[0].1["content-length"], "10");
    assert_eq!(
        answers[1].2, PAGE,
        "a GET follower of a HEAD leader gets the body"
    );
    assert_eq!(answers[2].2, "");
    // A stored GET answer serves HEAD without its body.
    let svc = layer.layer(page_origin(&origin, &seen));
    let head = svc.oneshot(request(Method::HEAD, &[])).await.unwrap();
    assert_eq!(head.extensions().get::<Outcome>(), Some(&Outcome::Hit));
    assert_eq!(body(head).await.unwrap(), "");
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn only_the_configured_methods_coalesce_whatever_the_extractor() {
    // The extractor doc's "by path" key: keys every method.
    let by_path = |req: &Request<Full<Bytes>>| Some(Key::new(req.uri().path().to_owned()));
    let origin = Origin::open();
    let layer = CoalesceLayer::builder(CoalesceConfig::new().ttl(Duration::from_secs(60)))
        .extractor(by_path)
        .build()
        .unwrap();
    let svc = layer.layer(origin.serve(support::echo_path));
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let res = svc.clone().oneshot(request(method, &[])).await.unwrap();
        assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Bypass));
    }
    // A POST never makes an answer a GET is given.
    let res = svc.clone().oneshot(get(&[])).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Leader));
    // Configured: a POST coalesces, but never with a GET.
    let layer = CoalesceLayer::builder(
        CoalesceConfig::new()
            .methods([Method::GET, Method::POST])
            .ttl(Duration::from_secs(60)),
    )
    .extractor(by_path)
    .build()
    .unwrap();
    let svc = layer.layer(origin.serve(support::echo_path));
    svc.clone().oneshot(get(&[])).await.unwrap();
    let post = svc
        .clone()
        .oneshot(request(Method::POST, &[]))
        .await
        .unwrap();
    assert_eq!(post.extensions().get::<Outcome>(), Some(&Outcome::Leader));
}

#[tokio::test]
async fn credentials_bypass_for_every_extractor_unless_keyed() {
    let by_path = |req: &Request<Full<Bytes>>| Some(Key::new(req.uri().path().to_owned()));
    let origin = Origin::open();
    let layer = CoalesceLayer::builder(
        CoalesceConfig::new().credential_header(HeaderName::from_static("x-api-key")),
    )
    .extractor(by_path)
    .build()
    .unwrap();
    let svc = layer.layer(origin.serve(support::echo_path));
    for (name, value) in [
        ("authorization", "Bearer a"),
        ("proxy-authorization", "Basic eDp5"),
        ("cookie", "sid=1"),
        ("x-api-key", "k1"),
    ] {
        let res = svc.clone().oneshot(get(&[(name, value)])).await.unwrap();
        assert_eq!(
            res.extensions().get::<Outcome>(),
            Some(&Outcome::Bypass),
            "{name}"
        );
    }
    // The default key bypasses them too, and keys them when asked to.
    let keyed = tower_coalesce::HttpKey::new().vary(HeaderName::from_static("x-api-key"));
    let layer = CoalesceLayer::builder(
        CoalesceConfig::new().credential_header(HeaderName::from_static("x-api-key")),
    )
    .extractor(keyed)
    .build()
    .unwrap();
    let svc = layer.layer(origin.serve(support::echo_path));
    let res = svc
        .clone()
        .oneshot(get(&[("x-api-key", "k1")]))
        .await
        .unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Leader));
    let res = svc
        .oneshot(get(&[("proxy-authorization", "Basic eDp5")]))
        .await
        .unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Bypass));
}

#[tokio::test]
async fn a_cache_control_that_cannot_be_read_keeps_the_answer_private() {
    let origin = Origin::gated();
    let svc_fn = |_req: Request<Full<Bytes>>| async {
        Ok::<_, BoxError>(
            Response::builder()
                .header(
                    header::CACHE_CONTROL,
                    http::HeaderValue::from_bytes(b"private, ext=\"caf\xe9\"").unwrap(),
                )
                .body(Full::new(Bytes::from_static(b"alice's")))
                .unwrap(),
        )
    };
    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let follower = leader_and_follower(&layer, &origin, svc_fn).await;
    assert_eq!(follower, Outcome::Pass, "the follower asked for itself");
    assert_eq!(layer.stats().stored, 0);
}

#[test]
fn durations_that_would_overflow_are_a_config_error_not_a_panic() {
    for config in [
        CoalesceConfig::new().wait_timeout(Duration::MAX),
        CoalesceConfig::new().lease(Duration::MAX),
        CoalesceConfig::new().backend_timeout(Duration::MAX),
        CoalesceConfig::new().ttl(Duration::MAX),
        CoalesceConfig::new().pass_ttl(Duration::MAX),
        CoalesceConfig::new().backend_cooldown(Duration::MAX),
    ] {
        let error = CoalesceLayer::builder(config)
            .build()
            .expect_err("accepted");
        assert!(error.to_string().contains("too long"), "{error}");
    }
    assert!(CoalesceLayer::builder(CoalesceConfig::new().methods([]))
        .build()
        .is_err());
    // At the limit, it works.
    let max = CoalesceConfig::MAX_DURATION;
    CoalesceLayer::builder(CoalesceConfig::new().wait_timeout(max).ttl(max).lease(max))
        .build()
        .unwrap();
}

#[tokio::test]
async fn the_longest_wait_timeout_still_answers() {
    let origin = Origin::open();
    let layer =
        CoalesceLayer::new(CoalesceConfig::new().wait_timeout(CoalesceConfig::MAX_DURATION));
    let svc = layer.layer(origin.serve(support::echo_path));
    let res = svc.oneshot(get(&[])).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

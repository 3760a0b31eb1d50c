//! Body-keyed requests through the real stack (`BufferLayer`, then the
//! coalescing layer, then an origin that records what it was sent): who
//! shares a flight, what the origin receives, what is stored.

mod support;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::time::Duration;
use support::body::{answers, burst, post, stack, until_calls, In, Origin};
use support::until;
use tower::ServiceExt;
use tower_coalesce::body_keys::{BodyKeys, Route};
use tower_coalesce::{CoalesceConfig, HttpKey};

fn search() -> BodyKeys {
    BodyKeys::new(HttpKey::new()).route(Route::json(Method::POST, "/search"))
}

#[tokio::test]
async fn json_variants_share_one_origin_call_made_with_the_leaders_body() {
    const N: usize = 50;
    let origin = Origin::gated();
    let (svc, layer) = stack(search(), CoalesceConfig::new(), &origin);
    let variants: Vec<String> = (0..N)
        .map(|i| match i % 3 {
            0 => format!(r#"{{"q":"lamp",{}"page":1}}"#, " ".repeat(i)),
            1 => format!("{}{{ \"page\" : 1 ,\n \"q\" : \"lamp\" }}", "\n".repeat(i)),
            _ => format!(r#"{{"page":1,"q":"l\u0061mp"}}{}"#, "\t".repeat(i)),
        })
        .collect();
    let tasks = burst(&svc, variants.iter().map(|v| post("/search", v)).collect()).await;
    until(&layer, "every follower", |s| s.followers == (N - 1) as u64).await;
    origin.open_gate();
    let answers = answers(tasks).await;
    assert_eq!(origin.calls(), 1);
    let sent = origin.sent();
    let leaders: Vec<u8> = sent[0].0.iter().flat_map(|c| c.to_vec()).collect();
    let leaders = String::from_utf8(leaders).unwrap();
    assert!(
        variants.contains(&leaders),
        "the origin got a body no caller sent"
    );
    assert!(answers.iter().all(|a| *a == answers[0]));
    assert_eq!(layer.flights_in_progress(), 0);
}

#[tokio::test]
async fn different_bodies_and_keyed_headers_never_share() {
    let keys = BodyKeys::new(HttpKey::new())
        .route(Route::json(Method::POST, "/search").vary(header::AUTHORIZATION));
    let origin = Origin::gated();
    let (svc, _layer) = stack(keys, CoalesceConfig::new(), &origin);
    let ask = |body: &str, token: &str| {
        let mut req = post("/search", body);
        req.headers_mut()
            .insert(header::AUTHORIZATION, token.parse().unwrap());
        req
    };
    let tasks = burst(
        &svc,
        vec![
            ask(r#"{"q":1}"#, "Bearer alice"),
            ask(r#"{"q":1}"#, "Bearer bob"),
            ask(r#"{"q":2}"#, "Bearer alice"),
            ask(r#"{ "q" : 1 }"#, "Bearer alice"),
        ],
    )
    .await;
    until_calls(&origin, 3).await;
    origin.open_gate();
    let answers = answers(tasks).await;
    assert_eq!(origin.calls(), 3);
    assert!(answers[0].ends_with(b"Some(\"Bearer alice\")"));
    assert!(answers[1].ends_with(b"Some(\"Bearer bob\")"));
    assert!(answers[2].starts_with(br#"{"q":2}"#));
    assert_eq!(answers[3], answers[0]);
}

#[tokio::test]
async fn a_credential_the_route_does_not_key_bypasses() {
    let origin = Origin::open();
    let (svc, layer) = stack(search(), CoalesceConfig::new(), &origin);
    let reqs = (0..5)
        .map(|_| {
            let mut req = post("/search", r#"{"q":1}"#);
            req.headers_mut()
                .insert(header::AUTHORIZATION, "Bearer a".parse().unwrap());
            req
        })
        .collect();
    answers(burst(&svc, reqs).await).await;
    assert_eq!(origin.calls(), 5);
    assert_eq!(layer.stats().bypasses, 5);
}

/// A request whose body comes in these frames.
fn streamed(frames: Vec<Frame<Bytes>>) -> Request<In> {
    let frames = frames
        .into_iter()
        .map(Ok::<_, std::io::Error>)
        .collect::<Vec<_>>();
    Request::post("/search")
        .header(header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        .unwrap()
}

#[tokio::test]
async fn a_body_over_the_limit_or_with_trailers_reaches_the_origin_frame_for_frame() {
    let keys = BodyKeys::new(HttpKey::new()).route(Route::json(Method::POST, "/search").limit(16));
    let origin = Origin::open();
    let (svc, layer) = stack(keys, CoalesceConfig::new(), &origin);
    let chunks = [
        &b"{\"q\":"[..],
        b"\"a long question, past the limit\"",
        b"}",
    ];
    let large = || {
        streamed(
            chunks
                .iter()
                .map(|c| Frame::data(Bytes::from_static(c)))
                .collect(),
        )
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "1".parse().unwrap());
    let with_trailers = streamed(vec![
        Frame::data(Bytes::from_static(b"{}")),
        Frame::trailers(trailers.clone()),
    ]);
    answers(burst(&svc, vec![large(), large(), with_trailers]).await).await;
    assert_eq!(origin.calls(), 3, "none of them coalesced");
    assert_eq!(layer.stats().bypasses, 3);
    let mut sent = origin.sent();
    sent.sort_by_key(|(data, _)| data.len());
    assert_eq!(sent[0], (vec![Bytes::from_static(b"{}")], Some(trailers)));
    for (data, trailers) in &sent[1..] {
        assert_eq!(data.iter().map(|c| &c[..]).collect::<Vec<_>>(), chunks);
        assert_eq!(*trailers, None);
    }
}

#[tokio::test]
async fn invalid_json_is_keyed_by_its_bytes() {
    let origin = Origin::gated();
    let (svc, layer) = stack(search(), CoalesceConfig::new(), &origin);
    let mut reqs: Vec<_> = (0..10).map(|_| post("/search", r#"{"q":"x""#)).collect();
    reqs.push(post("/search", r#"{"q": "x""#));
    let tasks = burst(&svc, reqs).await;
    until(&layer, "the followers", |s| s.followers == 9).await;
    origin.open_gate();
    let answers = answers(tasks).await;
    assert_eq!(origin.calls(), 2);
    assert!(answers[10].starts_with(br#"{"q": "x""#));
}

#[tokio::test]
async fn answers_are_shared_but_not_stored_unless_the_route_says_so() {
    let config = || CoalesceConfig::new().ttl(Duration::from_secs(60));
    let origin = Origin::open();
    let (svc, layer) = stack(search(), config(), &origin);
    for _ in 0..2 {
        answers(burst(&svc, vec![post("/search", r#"{"q":1}"#)]).await).await;
    }
    assert_eq!((origin.calls(), layer.stats().stored), (2, 0));

    let stored = BodyKeys::new(HttpKey::new()).route(Route::json(Method::POST, "/search").stored());
    let origin = Origin::open();
    let (svc, layer) = stack(stored, config(), &origin);
    for _ in 0..2 {
        answers(burst(&svc, vec![post("/search", r#"{"q":1}"#)]).await).await;
    }
    assert_eq!((origin.calls(), layer.stats().hits), (1, 1));
}

#[tokio::test]
async fn a_writes_url_purge_leaves_stored_answers_unless_the_route_is_purged_with_the_url() {
    for (route, calls) in [
        (Route::json(Method::POST, "/search").stored(), 2),
        (
            Route::json(Method::POST, "/search")
                .stored()
                .purged_with_url(),
            3,
        ),
    ] {
        let origin = Origin::open();
        let config = CoalesceConfig::new().ttl(Duration::from_secs(60));
        let (svc, _) = stack(BodyKeys::new(HttpKey::new()).route(route), config, &origin);
        let query = || post("/search", r#"{"q":1}"#);
        answers(burst(&svc, vec![query()]).await).await;
        // A write to the route's URL (not a JSON body: not keyed).
        let mut write = post("/search", "reindex");
        write
            .headers_mut()
            .insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        let res = svc.clone().oneshot(write).await.unwrap();
        assert!(res.headers().get("coalesce-purge").is_none());
        answers(burst(&svc, vec![query()]).await).await;
        assert_eq!(origin.calls(), calls);
    }
}

#[tokio::test]
async fn the_leaders_caller_going_away_leaves_the_followers_answered() {
    const N: usize = 10;
    let origin = Origin::gated();
    let (svc, layer) = stack(search(), CoalesceConfig::new(), &origin);
    let leader = burst(&svc, vec![post("/search", r#"{"q":1}"#)]).await;
    until(&layer, "the flight", |s| s.flights == 1).await;
    let followers = burst(
        &svc,
        (0..N).map(|_| post("/search", r#"{ "q": 1 }"#)).collect(),
    )
    .await;
    until(&layer, "the followers", |s| s.followers == N as u64).await;
    leader[0].abort();
    tokio::task::yield_now().await;
    origin.open_gate();
    let answers = answers(followers).await;
    assert_eq!(answers.len(), N);
    assert!(answers.iter().all(|a| a.starts_with(br#"{"q":1}"#)));
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_followers_own_timeout_affects_that_follower_alone() {
    let origin = Origin::gated();
    let (svc, layer) = stack(search(), CoalesceConfig::new(), &origin);
    let others = burst(
        &svc,
        (0..3).map(|_| post("/search", r#"{"q":1}"#)).collect(),
    )
    .await;
    until(&layer, "the followers", |s| s.followers == 2).await;
    let impatient = tokio::time::timeout(
        Duration::from_millis(50),
        svc.clone().oneshot(post("/search", r#"{"q":1}"#)),
    )
    .await;
    assert!(impatient.is_err());
    origin.open_gate();
    assert_eq!(answers(others).await.len(), 3);
    assert_eq!(origin.calls(), 1);
}

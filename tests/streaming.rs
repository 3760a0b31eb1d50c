//! Streaming fan-out in one process, over real TCP (invariant 11): every
//! caller of a flight reads the one answer as the origin sends it, whatever
//! its size; one origin call per burst; a body that fails or ends short
//! fails every caller's body; a slow or departed caller holds no one back.
//!
//! The origin here sends each chunk when the test says so, so the order of
//! events is proven by the test's own steps, not by timing.

mod support;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::time::Duration;
use support::tap::{
    answer, cacheable, client, read_at_least, request, rest, serve, Http, Origin, Tap,
};
use support::until;
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer, Outcome};

fn layer() -> CoalesceLayer {
    CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .outcome_header("x-coalesce"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_for_a_large_answer_costs_one_origin_call_and_every_caller_gets_every_byte() {
    const CALLERS: usize = 50;
    const LEN: usize = 4 << 20;
    let mut origin = Origin::new(&cacheable(LEN));
    let layer = layer();
    let addr = serve(&origin, &layer).await;
    let client = client();
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let res = request(&client, addr, &[]).await;
                let length = res.headers()["content-length"].to_str().unwrap().to_owned();
                let bytes = rest(res).await;
                (length, bytes)
            })
        })
        .collect();
    let tap = origin.tap().await;
    until(&layer, "the burst", |s| s.followers as usize == CALLERS - 1).await;
    let expected = answer(LEN);
    for chunk in expected.chunks(64 << 10) {
        tap.send(chunk).await;
    }
    drop(tap);
    for caller in callers {
        let (length, bytes) = caller.await.unwrap();
        assert_eq!(length, LEN.to_string(), "every caller is told the length");
        let bytes = bytes.expect("a whole body");
        assert!(bytes == expected[..], "every byte, in order");
    }
    assert_eq!(origin.calls(), 1, "one origin call for the whole burst");
    until(&layer, "the flight's end", |_| {
        layer.flights_in_progress() == 0
    })
    .await;
    assert_eq!(layer.stats().stored, 0, "over the stored size: not stored");
    assert_eq!(layer.stats().passed_flights, 0, "shared, not passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_read_the_first_bytes_before_the_origin_has_sent_the_rest() {
    const LEN: usize = 300_000;
    let mut origin = Origin::new(&cacheable(LEN));
    let layer = layer();
    let addr = serve(&origin, &layer).await;
    let client = client();
    let expected = answer(LEN);

    let mut leader = request(&client, addr, &[]).await;
    let tap = origin.tap().await;
    tap.send(&expected[..1000]).await;
    // The leader's caller has the first bytes while the origin holds the rest.
    let first = read_at_least(leader.body_mut(), 1000).await;
    assert_eq!(first, expected[..1000]);

    // A caller that comes now joins the flight and reads from the first byte.
    let mut joined = request(&client, addr, &[]).await;
    assert_eq!(joined.headers()["x-coalesce"], "follower");
    assert_eq!(
        read_at_least(joined.body_mut(), 1000).await,
        expected[..1000]
    );
    // Conditions and methods are answered from the head alone.
    let unchanged = request(&client, addr, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    let failed = request(&client, addr, &[("if-match", "\"v0\"")]).await;
    assert_eq!(failed.status(), StatusCode::PRECONDITION_FAILED);
    // A range whose bytes have arrived is answered now.
    let mut part = request(&client, addr, &[("range", "bytes=100-199")]).await;
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 100-199/{LEN}").as_str()
    );
    assert_eq!(
        read_at_least(part.body_mut(), 100).await,
        expected[100..200]
    );
    // A HEAD gets the head alone, now.
    let head = Request::head(format!("http://{addr}/report"));
    let head = client.request(head.body(Default::default()).unwrap());
    let head = tokio::time::timeout(Duration::from_secs(20), head)
        .await
        .expect("a head within 20 s")
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["x-coalesce"], "follower");
    assert_eq!(head.headers()["content-length"], LEN.to_string().as_str());
    assert!(rest(head).await.unwrap().is_empty());
    assert_eq!(origin.calls(), 1, "all of them from the one flight");

    for chunk in expected[1000..].chunks(16 << 10) {
        tap.send(chunk).await;
    }
    drop(tap);
    for res in [leader, joined] {
        assert_eq!(rest(res).await.unwrap(), expected[1000..]);
    }
    // Complete and small enough: stored, and the next request is a hit.
    until(&layer, "the store", |s| s.stored == 1).await;
    let hit = request(&client, addr, &[]).await;
    assert_eq!(hit.headers()["x-coalesce"], "hit");
    assert_eq!(rest(hit).await.unwrap(), expected);
    assert_eq!(origin.calls(), 1);
}

/// Three callers of one flight, each having read the first 5,000 bytes,
/// and the origin's tap.
async fn three_callers_reading(
    origin: &mut Origin,
    client: &Http,
    addr: SocketAddr,
    expected: &[u8],
) -> (Vec<Response<hyper::body::Incoming>>, Tap) {
    let mut callers = vec![request(client, addr, &[]).await];
    let tap = origin.tap().await;
    tap.send(&expected[..5000]).await;
    for _ in 0..2 {
        callers.push(request(client, addr, &[]).await);
    }
    for res in &mut callers {
        assert_eq!(read_at_least(res.body_mut(), 5000).await, expected[..5000]);
    }
    (callers, tap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_failing_mid_body_fails_every_caller_and_stores_nothing() {
    const LEN: usize = 200_000;
    let mut origin = Origin::new(&cacheable(LEN));
    let layer = layer();
    let addr = serve(&origin, &layer).await;
    let client = client();
    let expected = answer(LEN);
    let (callers, tap) = three_callers_reading(&mut origin, &client, addr, &expected).await;
    tap.fail().await;
    for res in callers {
        assert!(
            rest(res).await.is_err(),
            "a failed answer must not end like a whole one"
        );
    }
    until(&layer, "the flight's end", |_| {
        layer.flights_in_progress() == 0
    })
    .await;
    assert_eq!(layer.stats().stored, 0, "a failed body is never stored");
    assert_eq!(origin.calls(), 1);
    // The next request makes a new flight, and succeeds. On a new
    // connection: the failed bodies' were closed, and a pooled one could
    // be picked before the client has seen it closed.
    let fresh = support::tap::client();
    let next = tokio::spawn(async move { rest(request(&fresh, addr, &[]).await).await });
    let tap = origin.tap().await;
    for chunk in expected.chunks(50_000) {
        tap.send(chunk).await;
    }
    drop(tap);
    assert_eq!(next.await.unwrap().unwrap(), expected);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_ending_short_of_its_length_fails_every_caller_and_stores_nothing() {
    const LEN: usize = 200_000;
    let mut origin = Origin::new(&cacheable(LEN));
    let layer = layer();
    let addr = serve(&origin, &layer).await;
    let client = client();
    let expected = answer(LEN);
    let (callers, tap) = three_callers_reading(&mut origin, &client, addr, &expected).await;
    // Ends cleanly, 195,000 bytes short.
    drop(tap);
    for res in callers {
        assert!(
            rest(res).await.is_err(),
            "a short answer must not end like a whole one"
        );
    }
    until(&layer, "the flight's end", |_| {
        layer.flights_in_progress() == 0
    })
    .await;
    assert_eq!(layer.stats().stored, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_or_reads_slowly_holds_no_one_back() {
    const LEN: usize = 2 << 20;
    let mut origin = Origin::new(&cacheable(LEN));
    let layer = layer();
    let addr = serve(&origin, &layer).await;
    let client = client();
    let expected = answer(LEN);
    let (mut callers, tap) = three_callers_reading(&mut origin, &client, addr, &expected).await;
    // The leader's caller goes away; the second reads nothing more.
    drop(callers.remove(0));
    let slow = callers.remove(0);
    // The origin is read to its end all the same (its tap blocks on a
    // reader that stopped, which would hang this loop).
    for chunk in expected[5000..].chunks(64 << 10) {
        tap.send(chunk).await;
    }
    drop(tap);
    let fast = rest(callers.remove(0)).await.unwrap();
    assert_eq!(fast, expected[5000..]);
    // The slow caller still gets every byte when it reads.
    assert_eq!(rest(slow).await.unwrap(), expected[5000..]);
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_caller_past_the_window_gets_an_error_and_late_callers_start_a_new_flight() {
    let mut origin = Origin::new(&[("cache-control", "max-age=60".into())]);
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .max_stored_bytes(1000)
            .stream_window(64 << 10),
    );
    let svc = layer.layer(origin.service.clone());
    let get = || Request::get("/report").body(Body::empty()).unwrap();
    let first = tokio::spawn(svc.clone().oneshot(get()));
    let tap = origin.tap().await;
    tap.send(&[1; 1000]).await;
    let first = first.await.unwrap().unwrap();
    let slow = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(slow.extensions().get::<Outcome>(), Some(&Outcome::Follower));
    let reading = tokio::spawn(first.into_body().collect());
    for _ in 0..200 {
        tap.send(&[2; 1000]).await;
    }
    // The window has moved past the first byte: a new caller leads a new
    // flight rather than get a body with its start missing.
    let late = tokio::spawn(svc.clone().oneshot(get()));
    let second_tap = origin.tap().await;
    drop(tap);
    drop(second_tap);
    assert_eq!(reading.await.unwrap().unwrap().to_bytes().len(), 201_000);
    let err = slow.into_body().collect().await.unwrap_err();
    assert!(err.to_string().contains("fell too far behind"), "{err}");
    assert_eq!(
        late.await.unwrap().unwrap().extensions().get::<Outcome>(),
        Some(&Outcome::Leader)
    );
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stops_arriving_fails_every_caller_after_the_wait_timeout() {
    let mut origin = Origin::new(&[("cache-control", "max-age=60".into())]);
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .wait_timeout(Duration::from_secs(5)),
    );
    let svc = layer.layer(origin.service.clone());
    let get = || Request::get("/report").body(Body::empty()).unwrap();
    let first = tokio::spawn(svc.clone().oneshot(get()));
    let tap = origin.tap().await;
    tap.send(b"the start").await;
    let callers = [
        first.await.unwrap().unwrap(),
        svc.clone().oneshot(get()).await.unwrap(),
    ];
    // The origin holds the rest, and its connection, open.
    for res in callers {
        let err = res.into_body().collect().await.unwrap_err();
        assert!(err.to_string().contains("no byte"), "{err}");
    }
    drop(tap);
    assert_eq!(layer.stats().stored, 0);
}

/// A layer whose answers are fresh for 100 ms, and may then stand in for
/// the origin's failure for a minute (stale-if-error).
fn standing_in(max_stored_bytes: usize) -> CoalesceLayer {
    CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_millis(100))
            .stale_if_error(Duration::from_secs(60))
            .max_stored_bytes(max_stored_bytes)
            .outcome_header("x-coalesce"),
    )
}

/// Stores `body` through `layer` by one request, then lets it go stale.
async fn stored_then_stale(
    origin: &mut Origin,
    layer: &CoalesceLayer,
    addr: SocketAddr,
    body: &[u8],
) {
    let client = client();
    let first = tokio::spawn(async move { rest(request(&client, addr, &[]).await).await });
    let tap = origin.tap().await;
    tap.send(body).await;
    drop(tap);
    assert!(first.await.unwrap().unwrap() == body);
    until(layer, "the store", |s| s.stored == 1).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
}

/// A caller's outcome header, status and whole body (or its error).
async fn outcome_and_body(
    client: Http,
    addr: SocketAddr,
) -> (String, StatusCode, Result<bytes::Bytes, hyper::Error>) {
    let res = request(&client, addr, &[]).await;
    let outcome = res.headers()["x-coalesce"].to_str().unwrap().to_owned();
    (outcome, res.status(), rest(res).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_stale_answer_that_may_stand_in_no_head_goes_out_before_the_body_is_whole() {
    const LEN: usize = 20_000;
    let mut origin = Origin::new(&[("content-length", LEN.to_string())]);
    let layer = standing_in(1 << 20);
    let addr = serve(&origin, &layer).await;
    let expected = answer(LEN);
    stored_then_stale(&mut origin, &layer, addr, &expected).await;

    // Past its freshness: a flight asks the origin, whose body fails
    // midway, after its head and a quarter of the body.
    let client = client();
    let callers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(outcome_and_body(client.clone(), addr)))
        .collect();
    let tap = origin.tap().await;
    tap.send(&expected[..LEN / 4]).await;
    until(&layer, "the follower", |s| s.followers == 1).await;
    tap.fail().await;
    // Had the head gone out, the callers' bodies would now fail; as none
    // did, the stale answer stands in, whole, for every caller.
    for caller in callers {
        let (outcome, status, body) = caller.await.unwrap();
        assert_eq!((outcome.as_str(), status), ("stale", StatusCode::OK));
        assert!(body.expect("the stale answer, whole") == expected[..]);
    }
    assert_eq!(layer.stats().stale_on_error, 1);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_stored_size_the_stand_in_is_given_up_and_a_failure_fails_the_callers() {
    // No length: the body tells its size as it goes.
    let mut origin = Origin::new(&[]);
    let layer = standing_in(10_000);
    let addr = serve(&origin, &layer).await;
    let expected = answer(30_000);
    stored_then_stale(&mut origin, &layer, addr, &expected[..5000]).await;

    let client = client();
    let caller = tokio::spawn(async move { request(&client, addr, &[]).await });
    let tap = origin.tap().await;
    // Past the stored size the answer can no longer be stood in for: its
    // head goes out, and the body streams.
    tap.send(&expected[..6000]).await;
    tap.send(&expected[6000..12_000]).await;
    let mut res = caller.await.unwrap();
    assert_eq!(res.headers()["x-coalesce"], "leader");
    assert_eq!(
        read_at_least(res.body_mut(), 12_000).await,
        expected[..12_000]
    );
    tap.fail().await;
    assert!(
        rest(res).await.is_err(),
        "a failed answer must not end like a whole one"
    );
    assert_eq!(layer.stats().stale_on_error, 0);
    assert_eq!(origin.calls(), 2);
}

/// Trailers saying this gRPC status.
fn grpc_status(status: &str) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", status.parse().unwrap());
    trailers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_of_a_streamed_answer_reach_every_caller_at_its_end_and_decide_storing() {
    let mut origin = Origin::new(&[("cache-control", "max-age=60".into())]);
    let layer = layer();
    let svc = layer.layer(origin.service.clone());
    let get = || Request::get("/report").body(Body::empty()).unwrap();
    // A gRPC error is shared with the flight but not stored; the next
    // flight's OK is.
    for (status, stored) in [("5", 0), ("0", 1)] {
        let first = tokio::spawn(svc.clone().oneshot(get()));
        let tap = origin.tap().await;
        tap.send(b"part one").await;
        // The head is out and the body arriving: a caller joins mid-body.
        let first = first.await.unwrap().unwrap();
        let joined = svc.clone().oneshot(get()).await.unwrap();
        assert_eq!(
            joined.extensions().get::<Outcome>(),
            Some(&Outcome::Follower)
        );
        let reading = [first, joined].map(|res| tokio::spawn(res.into_body().collect()));
        tap.send(b", part two").await;
        tap.trailers(grpc_status(status)).await;
        for read in reading {
            let read = read.await.unwrap().unwrap();
            assert_eq!(read.trailers().expect("trailers")["grpc-status"], status);
            assert_eq!(read.to_bytes(), "part one, part two");
        }
        until(&layer, "the flight's end", |_| {
            layer.flights_in_progress() == 0
        })
        .await;
        assert_eq!(layer.stats().stored, stored, "grpc-status {status}");
    }
    assert_eq!(origin.calls(), 2);
}

/// A purge that drops an answer while its body streams — here by tag,
/// which names no flight — takes the flight from callers that come after
/// it: they start a new flight, as they may not be answered from the old
/// one, rather than join it again and again (before, they did, in a loop
/// that never yielded, and the process served nothing more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_after_a_purge_that_drops_a_streaming_answer_start_a_new_flight() {
    const LEN: usize = 300_000;
    let mut headers = cacheable(LEN);
    headers.push(("surrogate-key", "t".to_owned()));
    let mut origin = Origin::new(&headers);
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .tag_header(http::HeaderName::from_static("surrogate-key"))
            .outcome_header("x-coalesce"),
    );
    let addr = serve(&origin, &layer).await;
    let client = client();
    let expected = answer(LEN);

    let mut first = request(&client, addr, &[]).await;
    let tap = origin.tap().await;
    tap.send(&expected[..1000]).await;
    assert_eq!(
        read_at_least(first.body_mut(), 1000).await,
        expected[..1000]
    );
    layer.purger().purge_tag("t").await.unwrap();

    let later = tokio::spawn({
        let client = client.clone();
        async move { request(&client, addr, &[]).await }
    });
    let again = tokio::time::timeout(Duration::from_secs(10), origin.tap())
        .await
        .expect("the request after the purge calls the origin itself");
    for (tap, from) in [(&tap, 1000), (&again, 0)] {
        for chunk in expected[from..].chunks(64 << 10) {
            tap.send(chunk).await;
        }
    }
    drop((tap, again));
    let later = later.await.unwrap();
    assert_eq!(later.headers()["x-coalesce"], "leader");
    assert!(rest(later).await.unwrap() == expected[..]);
    assert!(rest(first).await.unwrap() == expected[1000..]);
    assert_eq!(origin.calls(), 2);
}

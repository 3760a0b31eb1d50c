//! The process-local tier: one flight per key, every way a flight can end.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{body, echo_path, get, until, Origin};
use tower::{Layer, ServiceExt};
use tower_coalesce::{
    BoxError, CoalesceConfig, CoalesceLayer, FlightError, FlightErrorKind, Key, Outcome,
    WaitFallback,
};

fn layer(config: CoalesceConfig) -> CoalesceLayer {
    CoalesceLayer::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_identical_requests_make_one_inner_call_and_share_one_body() {
    const N: usize = 10_000;
    let origin = Origin::gated();
    let layer = layer(CoalesceConfig::new());
    let svc = layer.layer(origin.serve(|_| async {
        Ok::<_, BoxError>(
            Response::builder()
                .header("x-answer", "42")
                .body(Full::new(Bytes::from(vec![b'z'; 4096])))
                .unwrap(),
        )
    }));
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot(get("/hot")).await })
        })
        .collect();
    until(&layer, "every follower to join", |s| {
        s.followers == (N - 1) as u64
    })
    .await;
    origin.open_gate();

    let mut first_ptr = None;
    let mut outcomes = std::collections::HashMap::new();
    for task in tasks {
        let res = task.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-answer"], "42");
        *outcomes
            .entry(*res.extensions().get::<Outcome>().unwrap())
            .or_insert(0) += 1;
        let mut body = res.into_body();
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(data.len(), 4096);
        assert!(body.frame().await.is_none(), "one frame, the whole body");
        // Every answer points at the same bytes: no per-follower copy.
        assert_eq!(*first_ptr.get_or_insert(data.as_ptr()), data.as_ptr());
    }
    assert_eq!(origin.calls(), 1);
    assert_eq!(outcomes[&Outcome::Leader], 1);
    assert_eq!(outcomes[&Outcome::Follower], N - 1);
    let stats = layer.stats();
    assert_eq!(
        (stats.requests, stats.flights, stats.origin_calls),
        (N as u64, 1, 1)
    );
    assert_eq!(
        layer.flights_in_progress(),
        0,
        "flight table must be empty after the burst"
    );
}

#[tokio::test]
async fn different_keys_do_not_coalesce() {
    let origin = Origin::gated();
    let layer = layer(CoalesceConfig::new());
    let svc = layer.layer(origin.serve(echo_path));
    let a = tokio::spawn(svc.clone().oneshot(get("/a")));
    let b = tokio::spawn(svc.clone().oneshot(get("/b")));
    until(&layer, "two flights", |s| s.flights == 2).await;
    origin.open_gate();
    assert_eq!(body(a.await.unwrap().unwrap()).await.unwrap(), "/a");
    assert_eq!(body(b.await.unwrap().unwrap()).await.unwrap(), "/b");
    assert_eq!(origin.calls(), 2);
    assert_eq!(layer.stats().followers, 0);
}

#[tokio::test]
async fn requests_without_a_key_bypass_untouched() {
    let origin = Origin::gated();
    let layer = layer(CoalesceConfig::new().outcome_header("x-coalesce"));
    let svc = layer.layer(origin.serve(echo_path));
    let post = |_: usize| {
        let svc = svc.clone();
        tokio::spawn(async move {
            let req = Request::post("/p")
                .body(Full::new(Bytes::from_static(b"data")))
                .unwrap();
            svc.oneshot(req).await
        })
    };
    let tasks: Vec<_> = (0..3).map(post).collect();
    until(&layer, "three bypasses", |s| s.bypasses == 3).await;
    origin.open_gate();
    for t in tasks {
        let res = t.await.unwrap().unwrap();
        assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Bypass));
        assert_eq!(res.headers()["x-coalesce"], "bypass");
        assert_eq!(body(res).await.unwrap(), "/p");
    }
    assert_eq!(origin.calls(), 3, "bypassed requests are never coalesced");
    assert_eq!(layer.stats().flights, 0);
}

#[tokio::test]
async fn leader_caller_dropped_mid_flight_still_answers_its_followers() {
    let (mock, mut handle) =
        tower_test::mock::pair::<Request<Full<Bytes>>, Response<Full<Bytes>>>();
    let layer = layer(CoalesceConfig::new());
    let svc = layer.layer(mock);
    let leader = tokio::spawn(svc.clone().oneshot(get("/x")));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.uri().path(), "/x");
    let followers: Vec<_> = (0..5)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/x"))))
        .collect();
    until(&layer, "followers", |s| s.followers == 5).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());

    send.send_response(Response::new(Full::new(Bytes::from_static(b"still here"))));
    for f in followers {
        let res = f.await.unwrap().unwrap();
        assert_eq!(body(res).await.unwrap(), "still here");
    }
    assert_eq!(layer.stats().origin_calls, 1);
    assert_eq!(layer.flights_in_progress(), 0);
}

#[tokio::test]
async fn inner_error_reaches_the_leader_as_itself_and_followers_as_502() {
    let (mock, mut handle) =
        tower_test::mock::pair::<Request<Full<Bytes>>, Response<Full<Bytes>>>();
    let layer = layer(CoalesceConfig::new());
    let svc = layer.layer(mock);
    let leader = tokio::spawn(svc.clone().oneshot(get("/e")));
    let (_, send) = handle.next_request().await.unwrap();
    let followers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/e"))))
        .collect();
    until(&layer, "followers", |s| s.followers == 3).await;
    send.send_error("database is down");

    let err = leader.await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "database is down");
    for f in followers {
        let res = f.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        let cause = res.extensions().get::<FlightError>().unwrap();
        assert_eq!(cause.kind(), FlightErrorKind::Origin);
        assert!(cause.to_string().contains("database is down"));
    }
    assert_eq!(layer.flights_in_progress(), 0);
    assert_eq!(layer.stats().errors, 1);

    // The next request elects a new leader.
    let next = tokio::spawn(svc.clone().oneshot(get("/e")));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(Full::new(Bytes::from_static(b"ok"))));
    assert_eq!(body(next.await.unwrap().unwrap()).await.unwrap(), "ok");
}

#[tokio::test]
async fn a_panicking_inner_service_gives_every_caller_500_and_leaves_no_flight() {
    let origin = Origin::gated();
    let layer = layer(CoalesceConfig::new());
    let svc = layer.layer(origin.serve(|req: Request<Full<Bytes>>| async move {
        if req.uri().path() == "/boom" {
            panic!("origin exploded");
        }
        echo_path(req).await
    }));
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/boom"))))
        .collect();
    until(&layer, "followers", |s| s.followers == 3).await;
    origin.open_gate();
    for t in tasks {
        let res = t.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            res.extensions().get::<FlightError>().unwrap().kind(),
            FlightErrorKind::Panic
        );
    }
    assert_eq!(layer.stats().panics, 1);
    assert_eq!(layer.flights_in_progress(), 0);
    let res = svc.clone().oneshot(get("/fine")).await.unwrap();
    assert_eq!(body(res).await.unwrap(), "/fine");
}

type FrameResult = Result<Frame<Bytes>, BoxError>;
type FrameBody = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<FrameResult>>>;

fn failing_body() -> FrameBody {
    StreamBody::new(futures_util::stream::iter(vec![
        Ok(Frame::data(Bytes::from_static(b"half of"))),
        Err::<Frame<Bytes>, BoxError>("connection reset".into()),
    ]))
}

#[tokio::test]
async fn a_body_that_fails_is_an_error_for_everyone_never_a_short_success() {
    let origin = Origin::gated();
    let layer = layer(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let svc =
        layer.layer(origin.serve(|_| async { Ok::<_, BoxError>(Response::new(failing_body())) }));
    let leader = tokio::spawn(svc.clone().oneshot(get("/b")));
    until(&layer, "the flight", |s| s.origin_calls == 1).await;
    let followers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/b"))))
        .collect();
    until(&layer, "followers", |s| s.followers == 3).await;
    origin.open_gate();

    let res = leader.await.unwrap().unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the leader's caller gets the inner response as it was"
    );
    let err = body(res).await.unwrap_err();
    assert_eq!(err.to_string(), "connection reset");
    for f in followers {
        let res = f.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            res.extensions().get::<FlightError>().unwrap().kind(),
            FlightErrorKind::Body
        );
    }
    assert_eq!(layer.stats().stored, 0, "a failed body is never stored");
    assert_eq!(layer.flights_in_progress(), 0);
}

#[tokio::test]
async fn a_body_over_the_stored_size_is_shared_by_every_caller_and_not_stored() {
    let big = Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<_>>());
    let origin = Origin::gated();
    let layer = layer(
        CoalesceConfig::new()
            .max_stored_bytes(1000)
            .ttl(Duration::from_secs(60)),
    );
    let answer = big.clone();
    let svc = layer.layer(origin.serve(move |_| {
        // Many small chunks and no size hint, so the limit is found while reading.
        let chunks: Vec<Result<_, BoxError>> = answer
            .chunks(300)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        async move {
            Ok::<_, BoxError>(Response::new(StreamBody::new(futures_util::stream::iter(
                chunks,
            ))))
        }
    }));
    let leader = tokio::spawn(svc.clone().oneshot(get("/big")));
    until(&layer, "the flight", |s| s.origin_calls == 1).await;
    let followers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/big"))))
        .collect();
    until(&layer, "followers", |s| s.followers == 3).await;
    origin.open_gate();

    let res = leader.await.unwrap().unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Leader));
    assert_eq!(
        body(res).await.unwrap(),
        big,
        "the leader's caller gets every byte in order"
    );
    for f in followers {
        let res = f.await.unwrap().unwrap();
        assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Follower));
        assert_eq!(body(res).await.unwrap(), big);
    }
    assert_eq!(origin.calls(), 1, "one origin call for every caller");
    until(&layer, "the flight's end", |_| {
        layer.flights_in_progress() == 0
    })
    .await;
    assert_eq!(layer.stats().stored, 0, "too large to store");
    assert_eq!(layer.stats().passed_flights, 0);
    // Not remembered as pass-through for being large: the next burst is
    // one flight again.
    let res = svc.clone().oneshot(get("/big")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Leader));
    assert_eq!(body(res).await.unwrap(), big);
}

#[tokio::test]
async fn a_declared_length_over_the_stored_size_streams_at_once_with_its_length() {
    let origin = Origin::open();
    let layer = layer(
        CoalesceConfig::new()
            .max_stored_bytes(10)
            .ttl(Duration::from_secs(60)),
    );
    let svc = layer.layer(origin.serve(|_| async {
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(vec![1u8; 11]))))
    }));
    let res = svc.clone().oneshot(get("/x")).await.unwrap();
    assert_eq!(res.body().size_hint().exact(), Some(11));
    assert_eq!(body(res).await.unwrap().len(), 11);
    assert_eq!(layer.stats().passed_flights, 0);
    assert_eq!(layer.stats().stored, 0);
}

#[tokio::test]
async fn a_private_answer_goes_to_its_own_caller_only() {
    let origin = Origin::gated();
    let layer = layer(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let svc = layer.layer(origin.serve(|req: Request<Full<Bytes>>| async move {
        let n = req
            .headers()
            .get("x-user")
            .cloned()
            .unwrap_or(http::HeaderValue::from_static("?"));
        Ok::<_, BoxError>(
            Response::builder()
                .header("set-cookie", "session=1")
                .body(Full::new(Bytes::from(n.as_bytes().to_vec())))
                .unwrap(),
        )
    }));
    let req = |user: &'static str| {
        Request::get("/me")
            .header("x-user", user)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let leader = tokio::spawn(svc.clone().oneshot(req("ann")));
    until(&layer, "the flight", |s| s.origin_calls == 1).await;
    let follower = tokio::spawn(svc.clone().oneshot(req("bob")));
    until(&layer, "the follower", |s| s.followers == 1).await;
    origin.open_gate();
    assert_eq!(body(leader.await.unwrap().unwrap()).await.unwrap(), "ann");
    let res = follower.await.unwrap().unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Pass));
    assert_eq!(
        body(res).await.unwrap(),
        "bob",
        "never another caller's private answer"
    );
    assert_eq!(layer.stats().stored, 0);
}

#[tokio::test]
async fn server_errors_are_shared_with_the_flight_and_not_stored() {
    let origin = Origin::gated();
    let layer = layer(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let svc = layer.layer(origin.serve(|_| async {
        Ok::<_, BoxError>(
            Response::builder()
                .status(503)
                .body(Full::new(Bytes::from_static(b"busy")))
                .unwrap(),
        )
    }));
    let tasks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/s"))))
        .collect();
    until(&layer, "followers", |s| s.followers == 2).await;
    origin.open_gate();
    for t in tasks {
        assert_eq!(
            t.await.unwrap().unwrap().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(origin.calls(), 1, "no stampede on the failing origin");
    svc.clone().oneshot(get("/s")).await.unwrap();
    assert_eq!(origin.calls(), 2, "a 5xx is never stored");
}

#[tokio::test]
async fn a_cached_hit_skips_the_inner_service_until_the_ttl_passes() {
    let origin = Origin::open();
    let layer = layer(
        CoalesceConfig::new()
            .ttl(Duration::from_millis(300))
            .outcome_header("x-coalesce"),
    );
    let svc = layer.layer(origin.serve(echo_path));
    let first = svc.clone().oneshot(get("/c")).await.unwrap();
    assert_eq!(first.headers()["x-coalesce"], "leader");
    for _ in 0..5 {
        let res = svc.clone().oneshot(get("/c")).await.unwrap();
        assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Hit));
        assert_eq!(res.headers()["x-coalesce"], "hit");
        assert_eq!(body(res).await.unwrap(), "/c");
    }
    assert_eq!(origin.calls(), 1);
    assert_eq!(layer.stats().hits, 5);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let res = svc.clone().oneshot(get("/c")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Leader));
    assert_eq!(origin.calls(), 2, "an expired entry is fetched again");
}

#[tokio::test]
async fn without_a_ttl_nothing_is_stored() {
    let origin = Origin::open();
    let layer = layer(CoalesceConfig::new());
    let svc = layer.layer(origin.serve(echo_path));
    for _ in 0..3 {
        svc.clone().oneshot(get("/n")).await.unwrap();
    }
    assert_eq!(origin.calls(), 3);
    assert_eq!(layer.stats().stored, 0);
}

#[tokio::test]
async fn when_every_caller_leaves_an_abandonable_flight_is_cancelled() {
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let origin = Origin::gated();
    let layer = layer(CoalesceConfig::new().complete_abandoned(false));
    let flag = dropped.clone();
    let svc = layer.layer(origin.serve(move |req| {
        let guard = SetOnDrop(flag.clone());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            echo_path(req).await
        }
    }));
    origin.open_gate();
    let leader = tokio::spawn(svc.clone().oneshot(get("/q")));
    until(&layer, "the flight", |s| s.origin_calls == 1).await;
    let follower = tokio::spawn(svc.clone().oneshot(get("/q")));
    until(&layer, "the follower", |s| s.followers == 1).await;
    leader.abort();
    until(&layer, "the leader's caller to go", |_| {
        leader.is_finished()
    })
    .await;
    assert!(
        !dropped.load(Ordering::SeqCst),
        "a follower still waits: the flight goes on"
    );
    follower.abort();
    until(&layer, "the cancellation", |s| s.cancelled == 1).await;
    assert_eq!(layer.flights_in_progress(), 0);
    until(&layer, "the inner future to be dropped", |_| {
        dropped.load(Ordering::SeqCst)
    })
    .await;
}

#[tokio::test]
async fn by_default_an_abandoned_flight_completes_and_stores_its_answer() {
    let origin = Origin::gated();
    let layer = layer(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let svc = layer.layer(origin.serve(echo_path));
    let leader = tokio::spawn(svc.clone().oneshot(get("/slow")));
    until(&layer, "the flight", |s| s.origin_calls == 1).await;
    leader.abort();
    let _ = leader.await;
    origin.open_gate();
    until(&layer, "the store", |s| s.stored == 1).await;
    let res = svc.clone().oneshot(get("/slow")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Hit));
    assert_eq!(origin.calls(), 1);
}

/// Sets its flag when dropped: proves a future was cancelled.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn an_inner_service_that_never_answers_costs_its_whole_flight_a_504_at_the_wait_timeout() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let never = tower::service_fn(move |_req: Request<Full<Bytes>>| {
        let guard = DropFlag(flag.clone());
        async move {
            let _guard = guard;
            std::future::pending::<Result<Response<Full<Bytes>>, BoxError>>().await
        }
    });
    let layer = layer(CoalesceConfig::new().wait_timeout(Duration::from_millis(100)));
    let svc = layer.layer(never);
    let leader = tokio::spawn(svc.clone().oneshot(get("/never")));
    until(&layer, "the flight", |s| s.origin_calls == 1).await;
    let followers: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/never"))))
        .collect();
    // Bounded generously: the point is that it ends, not how fast.
    let leader = tokio::time::timeout(Duration::from_secs(10), leader)
        .await
        .expect("the leader's caller is answered at the wait timeout")
        .unwrap()
        .unwrap();
    assert_eq!(leader.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(leader.extensions().get::<Outcome>(), Some(&Outcome::Leader));
    for follower in followers {
        let res = follower.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        let error = res.extensions().get::<FlightError>().unwrap();
        assert_eq!(error.kind(), FlightErrorKind::WaitTimeout);
    }
    assert!(
        dropped.load(Ordering::SeqCst),
        "the stuck inner call is dropped"
    );
    let stats = layer.stats();
    assert_eq!(stats.wait_timeouts, 1, "one flight timed out");
    assert_eq!(stats.origin_calls, 1);
    assert_eq!(layer.flights_in_progress(), 0);
}

#[tokio::test]
async fn at_the_wait_timeout_call_origin_sends_followers_to_the_origin_and_the_leader_keeps_waiting(
) {
    let (mock, mut handle) =
        tower_test::mock::pair::<Request<Full<Bytes>>, Response<Full<Bytes>>>();
    let layer = layer(
        CoalesceConfig::new()
            .wait_timeout(Duration::from_millis(50))
            .wait_fallback(WaitFallback::CallOrigin),
    );
    let svc = layer.layer(mock);
    let leader = tokio::spawn(svc.clone().oneshot(get("/w")));
    let (_, slow) = handle.next_request().await.unwrap();
    let follower = tokio::spawn(svc.clone().oneshot(get("/w")));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(Full::new(Bytes::from_static(b"own"))));
    let res = follower.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // It leads a new flight, of its own here.
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Leader));
    assert_eq!(body(res).await.unwrap(), "own");
    assert_eq!(
        layer.flights_in_progress(),
        0,
        "the timed-out flight left the table"
    );

    slow.send_response(Response::new(Full::new(Bytes::from_static(b"late"))));
    let res = leader.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body(res).await.unwrap(), "late");
    assert_eq!(layer.stats().wait_timeouts, 1);
}

/// The followers of a flight that timed out with `CallOrigin` do not all
/// call the origin at that instant: one of them leads a new flight, which
/// goes to the origin at once, and the others follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_wait_timeout_call_origin_makes_one_new_flight_for_the_followers() {
    const REQUESTS: usize = 50;
    let origin = Origin::gated();
    let layer = layer(
        CoalesceConfig::new()
            .wait_timeout(Duration::from_millis(100))
            .wait_fallback(WaitFallback::CallOrigin),
    );
    let svc = layer.layer(origin.serve(echo_path));
    let requests: Vec<_> = (0..REQUESTS)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/slow"))))
        .collect();
    until(&layer, "the new flight's call", |_| origin.calls() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        origin.calls(),
        2,
        "the first flight's call and one for all its followers"
    );
    origin.open_gate();
    for request in requests {
        let res = request.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body(res).await.unwrap(), "/slow");
    }
    assert_eq!(origin.calls(), 2);
    assert_eq!(layer.flights_in_progress(), 0);
}

#[tokio::test]
async fn an_extractor_that_panics_means_bypass() {
    let origin = Origin::open();
    let layer = CoalesceLayer::builder(CoalesceConfig::new())
        .extractor(|req: &Request<Full<Bytes>>| -> Option<Key> {
            if req.uri().path() == "/bad" {
                panic!("extractor bug");
            }
            Some(Key::from("fixed"))
        })
        .build()
        .unwrap();
    let svc = layer.layer(origin.serve(echo_path));
    let res = svc.clone().oneshot(get("/bad")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Bypass));
    assert_eq!(body(res).await.unwrap(), "/bad");
    let res = svc.clone().oneshot(get("/good")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Leader));
}

#[tokio::test]
async fn trailers_are_shared_with_followers() {
    let origin = Origin::gated();
    let layer = layer(CoalesceConfig::new());
    let svc = layer.layer(origin.serve(|_| async {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "5".parse().unwrap());
        let frames: Vec<Result<_, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"m"))),
            Ok(Frame::trailers(trailers)),
        ];
        Ok::<_, BoxError>(Response::new(StreamBody::new(futures_util::stream::iter(
            frames,
        ))))
    }));
    let tasks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/t"))))
        .collect();
    until(&layer, "followers", |s| s.followers == 2).await;
    origin.open_gate();
    for t in tasks {
        let collected = t
            .await
            .unwrap()
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "5");
        assert_eq!(collected.to_bytes(), "m");
    }
}

#[test]
fn nonsense_settings_are_clear_errors() {
    let cases = [
        (CoalesceConfig::new().lease(Duration::ZERO), "lease"),
        (
            CoalesceConfig::new().backend_timeout(Duration::ZERO),
            "backend_timeout must be greater than zero",
        ),
        (
            CoalesceConfig::new()
                .lease(Duration::from_secs(1))
                .backend_timeout(Duration::from_secs(1)),
            "two thirds of the lease",
        ),
    ];
    for (config, says) in cases {
        let err = CoalesceLayer::builder(config).build().unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
    }
    assert!(
        CoalesceLayer::builder(CoalesceConfig::new())
            .build()
            .is_ok(),
        "the defaults are valid"
    );
}

#[tokio::test]
async fn a_key_whose_answer_was_private_passes_straight_to_the_origin_for_a_while() {
    let origin = Origin::gated();
    let layer = layer(CoalesceConfig::new().pass_ttl(Duration::from_millis(300)));
    let svc = layer.layer(origin.serve(|req: Request<Full<Bytes>>| async move {
        let mut res = echo_path(req).await?;
        res.headers_mut()
            .insert("cache-control", "private".parse().unwrap());
        Ok::<_, BoxError>(res)
    }));
    origin.open_gate();
    let first = svc.clone().oneshot(get("/mine")).await.unwrap();
    assert_eq!(first.extensions().get::<Outcome>(), Some(&Outcome::Leader));

    // Now the key is known to be private: no flight, no waiting.
    for _ in 0..3 {
        let res = svc.clone().oneshot(get("/mine")).await.unwrap();
        assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Pass));
        assert_eq!(body(res).await.unwrap(), "/mine");
    }
    assert_eq!((layer.stats().passes, layer.stats().flights), (3, 1));

    // After pass_ttl the key is given a flight again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let res = svc.clone().oneshot(get("/mine")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Leader));
    assert_eq!(origin.calls(), 5);
}

#[tokio::test]
async fn with_pass_ttl_zero_private_keys_keep_getting_flights() {
    let origin = Origin::open();
    let layer = layer(CoalesceConfig::new().pass_ttl(Duration::ZERO));
    let svc = layer.layer(origin.serve(|req: Request<Full<Bytes>>| async move {
        let mut res = echo_path(req).await?;
        res.headers_mut()
            .insert("set-cookie", "a=b".parse().unwrap());
        Ok::<_, BoxError>(res)
    }));
    for _ in 0..2 {
        let res = svc.clone().oneshot(get("/c")).await.unwrap();
        assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Leader));
    }
    assert_eq!(layer.stats().passes, 0);
}

/// Runs a flight on a runtime of its own whose origin never answers, lets one
/// follower join it from a second runtime, then shuts the first runtime down:
/// the flight's task is dropped unfinished, the one way a flight ends without
/// an answer. Returns the follower's outcome, its body and the origin calls.
fn follow_a_flight_whose_runtime_shuts_down<E>(
    layer: CoalesceLayer<E>,
) -> (Option<Outcome>, Bytes, usize)
where
    E: tower_coalesce::KeyExtractor<Full<Bytes>>,
{
    use std::sync::atomic::AtomicUsize;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let svc = layer.layer(tower::service_fn(move |_req: Request<Full<Bytes>>| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(format!("call {n}")))))
        }
    }));
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    let (first, second) = (runtime(), runtime());
    let settle = |what: &str, done: &dyn Fn() -> bool| {
        let start = std::time::Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(10), "no {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let _leader = first.spawn(svc.clone().oneshot(get("/k")));
    settle("origin call", &|| calls.load(Ordering::SeqCst) == 1);
    let follower = second.spawn(svc.clone().oneshot(get("/k")));
    settle("follower", &|| layer.stats().followers == 1);
    first.shutdown_background();
    let res = second.block_on(follower).unwrap().unwrap();
    let outcome = res.extensions().get::<Outcome>().copied();
    let bytes = second.block_on(body(res)).unwrap();
    assert_eq!(layer.stats().dangling, 1);
    assert_eq!(layer.flights_in_progress(), 0);
    (outcome, bytes, calls.load(Ordering::SeqCst))
}

#[test]
fn followers_of_a_flight_whose_task_was_dropped_start_again() {
    let (outcome, body, calls) =
        follow_a_flight_whose_runtime_shuts_down(layer(CoalesceConfig::new()));
    // The follower led a new flight, with its own request.
    assert_eq!(outcome, Some(Outcome::Leader));
    assert_eq!(body, "call 1");
    assert_eq!(calls, 2);
}

#[test]
fn a_follower_whose_request_lost_its_key_calls_the_origin_alone() {
    // Keys the first two requests only: when the follower looks again after
    // the flight was dropped, its request has no key any more.
    let keyed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let layer = CoalesceLayer::builder(CoalesceConfig::new())
        .extractor(move |_req: &Request<Full<Bytes>>| -> Option<Key> {
            (keyed.fetch_add(1, Ordering::SeqCst) < 2).then(|| Key::from("k"))
        })
        .build()
        .unwrap();
    let (outcome, body, calls) = follow_a_flight_whose_runtime_shuts_down(layer);
    assert_eq!(outcome, Some(Outcome::Pass));
    assert_eq!(body, "call 1");
    assert_eq!(calls, 2);
}

#[tokio::test]
async fn stored_answers_carry_their_age_and_answers_from_the_origin_do_not() {
    let origin = Origin::gated();
    let layer = layer(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let svc = layer.layer(origin.serve(echo_path));
    let leader = tokio::spawn(svc.clone().oneshot(get("/aged")));
    until(&layer, "the flight", |s| s.origin_calls == 1).await;
    let follower = tokio::spawn(svc.clone().oneshot(get("/aged")));
    until(&layer, "the follower", |s| s.followers == 1).await;
    origin.open_gate();
    for task in [leader, follower] {
        let res = task.await.unwrap().unwrap();
        assert_eq!(support::age(&res), None);
    }
    let res = svc.clone().oneshot(get("/aged")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Hit));
    // Stored a moment ago: whole seconds, so 0 (1 on a very slow machine).
    let age = support::age(&res).expect("an Age header");
    assert!(age <= 1, "age {age}");
    assert_eq!(body(res).await.unwrap(), "/aged");
}

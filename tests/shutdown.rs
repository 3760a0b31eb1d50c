//! `CoalesceLayer::shutdown`: flights under way land within the grace;
//! those still running after it are stopped, their followers answered and
//! their leases released at once; requests after it bypass the layer.

mod support;

use http::StatusCode;
use std::time::{Duration, Instant};
use support::redis::RedisServer;
use support::{body, echo_path, get, until, Origin, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{
    CoalesceConfig, CoalesceLayer, FlightError, FlightErrorKind, Outcome, RedisBackend,
};

fn layered(layer: &CoalesceLayer, origin: &Origin) -> Svc {
    Svc::new(layer.layer(origin.serve(echo_path)))
}

/// A layer in front of a gated origin, with a flight for `/a` under way:
/// its leader's and its follower's calls.
async fn a_flight_with_a_follower() -> (CoalesceLayer, Origin, Svc, [Answering; 2]) {
    let origin = Origin::gated();
    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let svc = layered(&layer, &origin);
    let leader = tokio::spawn(svc.clone().oneshot(get("/a")));
    let follower = tokio::spawn(svc.clone().oneshot(get("/a")));
    until(&layer, "a follower", |s| s.followers == 1).await;
    (layer, origin, svc, [leader, follower])
}

type Answering = tokio::task::JoinHandle<
    Result<
        http::Response<tower_coalesce::CoalesceBody<http_body_util::Full<bytes::Bytes>>>,
        tower_coalesce::BoxError,
    >,
>;

#[tokio::test]
async fn shutdown_waits_for_flights_in_progress_then_requests_bypass() {
    let (layer, origin, svc, [leader, follower]) = a_flight_with_a_follower().await;

    let shutting = tokio::spawn({
        let layer = layer.clone();
        async move { layer.shutdown(Duration::from_secs(20)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!shutting.is_finished(), "shutdown waits for the flight");
    origin.open_gate();
    for res in [leader, follower] {
        let res = res.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body(res).await.unwrap(), "/a");
    }
    let report = shutting.await.unwrap();
    assert_eq!(report.stopped_flights, 0);
    assert_eq!(layer.flights_in_progress(), 0);

    // From now on the layer is out of the way: stored answers are not
    // served, and every request reaches the inner service.
    for _ in 0..2 {
        let res = svc.clone().oneshot(get("/a")).await.unwrap();
        assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Bypass));
        assert_eq!(body(res).await.unwrap(), "/a");
    }
    assert_eq!(origin.calls(), 3);
}

#[tokio::test]
async fn a_flight_still_running_after_the_grace_is_stopped_and_its_followers_answered() {
    // The caller that started the flight leaves; the flight goes on
    // (`complete_abandoned`), with a follower.
    let (layer, origin, _svc, [leader, follower]) = a_flight_with_a_follower().await;
    leader.abort();

    let report = layer.shutdown(Duration::from_millis(50)).await;
    assert_eq!(report.stopped_flights, 1);
    assert_eq!(layer.flights_in_progress(), 0);
    let res = follower.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let error = res.extensions().get::<FlightError>().unwrap();
    assert_eq!(error.kind(), FlightErrorKind::Dropped);
    assert_eq!(origin.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_held_by_a_stopped_flight_is_released_and_another_instance_leads_at_once() {
    let server = RedisServer::start();
    // A 30 s lease: without a release, the waiting instance would wait that
    // long for it.
    let config = || {
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .lease(Duration::from_secs(30))
    };
    let leaving_origin = Origin::gated();
    let leaving =
        CoalesceLayer::new(config().backend(RedisBackend::connect(server.url()).await.unwrap()));
    let staying_origin = Origin::open();
    let staying =
        CoalesceLayer::new(config().backend(RedisBackend::connect(server.url()).await.unwrap()));
    let cut_short = tokio::spawn(layered(&leaving, &leaving_origin).oneshot(get("/a")));
    until(&leaving, "the lease", |s| s.flights == 1).await;
    while leaving_origin.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let waiting = tokio::spawn(layered(&staying, &staying_origin).oneshot(get("/a")));
    until(&staying, "a wait on the other instance", |s| {
        s.remote_waits == 1
    })
    .await;

    let started = Instant::now();
    let report = leaving.shutdown(Duration::ZERO).await;
    assert_eq!(report.stopped_flights, 1);
    let res = waiting.await.unwrap().unwrap();
    let took = started.elapsed();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body(res).await.unwrap(), "/a");
    assert_eq!(staying_origin.calls(), 1, "the staying instance led");
    assert!(
        took < Duration::from_secs(10),
        "the waiting instance took over {took:?} after the shutdown"
    );
    let res = cut_short.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

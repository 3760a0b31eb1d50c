//! Answers that are not stored, across instances sharing a real
//! redis-server: a server error reaches the waiting instances in the
//! completion message (one origin call for the whole burst), and a private
//! answer sends them to the origin at once, in parallel, with the key marked
//! pass-through for every instance.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use std::time::{Duration, Instant};
use support::redis::RedisServer;
use support::{body, get, Origin, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{BoxError, CoalesceConfig, CoalesceLayer, Outcome, RedisBackend};

const INSTANCES: usize = 4;
const PER_INSTANCE: usize = 25;
const ORIGIN: Duration = Duration::from_millis(300);

/// Instances on one Redis in front of one origin that takes [`ORIGIN`] to
/// answer with `status` and `headers`.
async fn instances(
    server: &RedisServer,
    origin: &Origin,
    status: StatusCode,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<(CoalesceLayer, Svc)> {
    let answer = move |_req: Request<Full<Bytes>>| async move {
        tokio::time::sleep(ORIGIN).await;
        let mut res = Response::builder().status(status);
        for (k, v) in headers {
            res = res.header(*k, *v);
        }
        Ok::<_, BoxError>(res.body(Full::new(Bytes::from_static(b"answer"))).unwrap())
    };
    let mut out = Vec::new();
    for _ in 0..INSTANCES {
        let backend = RedisBackend::connect(server.url()).await.unwrap();
        let layer = CoalesceLayer::new(
            CoalesceConfig::new()
                .ttl(Duration::from_secs(60))
                .backend(backend),
        );
        let svc = tower::util::BoxCloneService::new(layer.layer(origin.serve(answer)));
        out.push((layer, svc));
    }
    out
}

/// Sends a burst spread over the instances, the first instance first so it
/// leads; returns each answer's status, outcome and latency.
async fn burst(instances: &[(CoalesceLayer, Svc)]) -> Vec<(StatusCode, Outcome, Duration)> {
    let start = Instant::now();
    let send = |svc: &Svc| {
        let svc = svc.clone();
        tokio::spawn(async move {
            let res = svc.oneshot(get("/flaky")).await.unwrap();
            let outcome = *res.extensions().get::<Outcome>().unwrap();
            let status = res.status();
            assert_eq!(body(res).await.unwrap(), "answer");
            (status, outcome, start.elapsed())
        })
    };
    let mut tasks = vec![send(&instances[0].1)];
    // The first instance holds the lease before the others ask.
    let deadline = Instant::now() + Duration::from_secs(10);
    while instances[0].0.stats().origin_calls == 0 {
        assert!(Instant::now() < deadline, "the first instance never led");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for i in 1..INSTANCES * PER_INSTANCE {
        tasks.push(send(&instances[i % INSTANCES].1));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_burst_over_four_instances_costs_one_origin_call() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let instances = instances(&server, &origin, StatusCode::SERVICE_UNAVAILABLE, &[]).await;
    let answers = burst(&instances).await;
    assert!(answers
        .iter()
        .all(|(status, _, _)| *status == StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(
        origin.calls(),
        1,
        "the waiting instances got the 503 in the message"
    );
    let takeovers: u64 = instances.iter().map(|(l, _)| l.stats().takeovers).sum();
    assert_eq!(takeovers, 0);
    let worst = answers.iter().map(|a| a.2).max().unwrap();
    // One origin call and a message; generous for a loaded machine, and far
    // below the four calls in a row (1.2 s) it took before.
    assert!(worst < ORIGIN * 3, "worst caller {worst:?}");
    for (layer, _) in &instances {
        assert_eq!(layer.stats().stored, 0, "a 503 is never stored");
        assert_eq!(layer.flights_in_progress(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_answer_sends_every_instance_to_the_origin_at_once() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let instances = instances(
        &server,
        &origin,
        StatusCode::OK,
        &[("cache-control", "private")],
    )
    .await;
    let answers = burst(&instances).await;
    let total = INSTANCES * PER_INSTANCE;
    // Every caller got its own call: the answers could not be shared.
    assert_eq!(origin.calls(), total);
    assert_eq!(
        answers.iter().filter(|a| a.1 == Outcome::Leader).count(),
        1,
        "one leader; everyone else called for itself"
    );
    assert!(answers.iter().all(|a| a.0 == StatusCode::OK));
    let takeovers: u64 = instances.iter().map(|(l, _)| l.stats().takeovers).sum();
    assert_eq!(
        takeovers, 0,
        "no instance took the lease over one after another"
    );
    let worst = answers.iter().map(|a| a.2).max().unwrap();
    // About two origin calls: the leader's, then everyone's in parallel.
    assert!(worst < ORIGIN * 4, "worst caller {worst:?}");

    // The key is now pass-through for every instance, including those that
    // saw no burst: the next request goes straight to the origin.
    let fresh = RedisBackend::connect(server.url()).await.unwrap();
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .backend(fresh),
    );
    let svc = layer.layer(origin.serve(|_req: Request<Full<Bytes>>| async {
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"answer"))))
    }));
    let res = svc.clone().oneshot(get("/flaky")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Pass));
    assert_eq!(layer.stats().stored, 0);
    let mark: Option<String> = redis::cmd("GET")
        .arg(
            RedisBackend::connect(server.url()).await.unwrap().pass_key(
                &tower_coalesce::KeyExtractor::extract(
                    &tower_coalesce::HttpKey::new(),
                    &get("/flaky"),
                )
                .unwrap(),
            ),
        )
        .query(&mut server.conn())
        .unwrap();
    assert!(mark.is_some(), "the pass mark is in Redis");
}

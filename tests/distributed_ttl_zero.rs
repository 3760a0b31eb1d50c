//! Coalescing only — a ttl of zero, nothing stored — across instances
//! sharing a real redis-server: a burst over four instances still makes one
//! origin call, whatever the answer's size (in the completion message, or
//! streamed), and nothing is kept for the requests after it.

mod support;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use support::redis::RedisServer;
use support::{body, get, Origin, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{BoxError, CoalesceConfig, CoalesceLayer, RedisBackend};

const INSTANCES: usize = 4;
const PER_INSTANCE: usize = 25;

/// The answer's body: `len` bytes, each its offset's low byte.
fn answer_of(len: usize) -> Bytes {
    (0..len).map(|i| i as u8).collect::<Vec<u8>>().into()
}

/// Instances on one Redis, coalescing only (the default ttl of zero), in
/// front of `origin` answering with a body of `len` bytes.
async fn instances(server: &RedisServer, origin: &Origin, len: usize) -> Vec<(CoalesceLayer, Svc)> {
    let answer = move |_req: Request<Full<Bytes>>| async move {
        let res = Response::builder()
            .header("cache-control", "max-age=60")
            .body(Full::new(answer_of(len)))
            .unwrap();
        Ok::<_, BoxError>(res)
    };
    let mut out = Vec::new();
    for _ in 0..INSTANCES {
        let backend = RedisBackend::connect(server.url()).await.unwrap();
        let layer = CoalesceLayer::new(CoalesceConfig::new().backend(backend));
        let svc = tower::util::BoxCloneService::new(layer.layer(origin.serve(answer)));
        out.push((layer, svc));
    }
    out
}

/// A burst of `PER_INSTANCE` requests on each instance, held at the origin
/// until every instance waits (the leader's on the origin, the others on
/// its lease); every caller's body is checked.
async fn burst(instances: &[(CoalesceLayer, Svc)], origin: &Origin, len: usize) {
    let mut tasks = Vec::new();
    for i in 0..PER_INSTANCE * INSTANCES {
        let svc = instances[i % INSTANCES].1.clone();
        tasks.push(tokio::spawn(async move {
            let res = svc.oneshot(get("/export")).await.unwrap();
            body(res).await.unwrap()
        }));
    }
    let gathered = || {
        let followers: u64 = instances.iter().map(|(l, _)| l.stats().followers).sum();
        let waiting: u64 = instances.iter().map(|(l, _)| l.stats().remote_waits).sum();
        followers == ((PER_INSTANCE - 1) * INSTANCES) as u64
            && waiting == (INSTANCES - 1) as u64
            && origin.calls() == 1
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !gathered() {
        let followers: u64 = instances.iter().map(|(l, _)| l.stats().followers).sum();
        let waiting: u64 = instances.iter().map(|(l, _)| l.stats().remote_waits).sum();
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst never gathered: {} origin calls, {followers} followers, {waiting} \
             instances waiting on the lease",
            origin.calls()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    origin.open_gate();
    let expected = answer_of(len);
    for task in tasks {
        assert!(task.await.unwrap() == expected, "a caller got other bytes");
    }
    for (layer, _) in instances {
        assert_eq!(layer.stats().stored, 0, "a ttl of zero stores nothing");
        assert_eq!(layer.flights_in_progress(), 0);
    }
}

/// One burst of an answer of `len` bytes: one origin call for it, and one
/// more for a request after it (nothing was kept).
async fn one_call_per_burst(len: usize) {
    let server = RedisServer::start();
    let origin = Origin::gated();
    let instances = instances(&server, &origin, len).await;
    burst(&instances, &origin, len).await;
    assert_eq!(origin.calls(), 1, "one origin call for the whole burst");
    let res = instances[1]
        .1
        .clone()
        .oneshot(get("/export"))
        .await
        .unwrap();
    assert!(body(res).await.unwrap() == answer_of(len));
    assert_eq!(
        origin.calls(),
        2,
        "nothing kept: the next request calls the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_answer_reaches_every_instance_in_the_completion_message() {
    one_call_per_burst(2 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_whole_at_once_over_the_message_limit_reaches_every_instance() {
    // Over 16 KiB, the size up to which a stored answer travels in its
    // completion message; whole at once, so no stream is opened.
    one_call_per_burst(48 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_streams_to_every_instance() {
    // Over `max_stored_bytes` (1 MiB): shared as a stream.
    one_call_per_burst(3 * 1024 * 1024 / 2).await;
}

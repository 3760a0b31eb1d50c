//! Invariant 13, degrade don't multiply: when Redis answers late — slower
//! than `backend_timeout`, but answering, as a saturated Redis does —
//! instances still coalesce across each other instead of each calling the
//! origin; when it stops answering at all, flights still go on without it
//! within a bound.

mod support;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::redis::{RedisServer, Relay};
use support::{body, get, Svc};
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer, RedisBackend};

const INSTANCES: usize = 4;

/// Answers every path at once with the path, but `/hot`, which it counts
/// and holds until `gate` opens.
#[derive(Clone)]
struct Origin {
    hot_calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Origin {
    fn serve(&self) -> impl support::OriginService {
        let me = self.clone();
        tower::service_fn(move |req: Request<Full<Bytes>>| {
            let me = me.clone();
            async move {
                let path = req.uri().path().to_owned();
                if path == "/hot" {
                    me.hot_calls.fetch_add(1, Ordering::SeqCst);
                    me.gate.acquire().await.unwrap().forget();
                }
                Ok(Response::new(Full::new(Bytes::from(path))))
            }
        })
    }
}

/// `INSTANCES` layers on Redis through `relay`, library defaults but the
/// ttl (so `backend_timeout` is 250 ms).
async fn instances(relay: &Relay, origin: &Origin) -> Vec<(CoalesceLayer, Svc)> {
    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        let backend = RedisBackend::connect(relay.url()).await.unwrap();
        let layer = CoalesceLayer::new(
            CoalesceConfig::new()
                .ttl(Duration::from_secs(60))
                .backend(backend),
        );
        let svc = Svc::new(layer.layer(origin.serve()));
        instances.push((layer, svc));
    }
    instances
}

/// Other traffic through `svc`: a request for a new key every 20 ms, so
/// the instance's calls to Redis keep being answered, late or not.
fn background(svc: &Svc, instance: usize) -> tokio::task::JoinHandle<()> {
    let svc = svc.clone();
    tokio::spawn(async move {
        for n in 0.. {
            let svc = svc.clone();
            tokio::spawn(svc.oneshot(get(&format!("/other/{instance}/{n}"))));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_answering_late_under_load_still_coalesces_across_instances() {
    let server = RedisServer::start();
    let relay = Relay::start(server.port);
    let origin = Origin {
        hot_calls: Arc::default(),
        gate: Arc::new(Semaphore::new(0)),
    };
    let instances = instances(&relay, &origin).await;
    let traffic: Vec<_> = instances
        .iter()
        .enumerate()
        .map(|(i, (_, svc))| background(svc, i))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Redis now answers every call 700 ms late: slower than
    // `backend_timeout` (twice over), but answering.
    relay.delay_replies(Duration::from_millis(700));
    // Long enough for the instances to learn how late it answers (while
    // they learn it, a burst may cost one call per instance).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let hot: Vec<_> = instances
        .iter()
        .flat_map(|(_, svc)| (0..10).map(move |_| tokio::spawn(svc.clone().oneshot(get("/hot")))))
        .collect();
    // Time for every instance's lease attempt to be answered, late as it is.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    origin.gate.add_permits(1000);
    for call in hot {
        let res = call.await.unwrap().unwrap();
        assert_eq!(body(res).await.unwrap(), "/hot");
    }
    for task in traffic {
        task.abort();
    }
    let calls = origin.hot_calls.load(Ordering::SeqCst);
    assert!(
        calls <= 2,
        "{calls} origin calls for one key over {INSTANCES} instances with a slow Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_is_gone_without_within_a_bound() {
    let server = RedisServer::start();
    let relay = Relay::start(server.port);
    let origin = Origin {
        hot_calls: Arc::default(),
        gate: Arc::new(Semaphore::new(1000)),
    };
    let instances = instances(&relay, &origin).await;
    // Replies held for a minute: a stalled Redis, not a slow one.
    relay.delay_replies(Duration::from_secs(60));
    let start = Instant::now();
    let res = instances[0]
        .1
        .clone()
        .oneshot(get("/stalled"))
        .await
        .unwrap();
    assert_eq!(body(res).await.unwrap(), "/stalled");
    let took = start.elapsed();
    // The lookup and the lease attempt, each given up at `backend_timeout`
    // (250 ms), or after one more when Redis answered something just
    // before: well under a second and a half either way.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
}

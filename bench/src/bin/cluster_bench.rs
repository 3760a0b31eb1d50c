//! One Redis server beside a Redis Cluster, in the same run: the Redis
//! commands a cold burst over several instances costs, and how soon an
//! instance waiting on another's flight is answered once that flight's
//! origin call returns.
//!
//! ```text
//! cargo run --release -p coalesce-bench --bin cluster_bench
//! ```
//!
//! It starts its own servers on free loopback ports (`redis-server` and
//! `redis-cli` on the `PATH`: `apt-get install -y redis-server`): one server,
//! and a cluster of three masters with a replica each. Every instance is a
//! `CoalesceLayer` with a `RedisBackend` of its own (a connection of its
//! own, or on the cluster one per node), `ttl` 60 s.
//!
//! 1. **Commands per cold burst.** A fresh namespace per burst; statistics
//!    reset once the instances are connected (`CONFIG RESETSTAT` on every
//!    node), so set-up is not counted; then the requests at once,
//!    round-robin over the instances, for one key; the origin answers once
//!    every request has joined a flight. The count is the sum of `calls=`
//!    in `INFO commandstats` over the server, or over the cluster's masters
//!    (replicas replay writes), less the benchmark's own and the cluster
//!    client's topology commands (`INFO`, `CONFIG`, `CLUSTER`, `PING`,
//!    `PUBSUB`). A first, unreported burst loads the scripts.
//! 2. **Cross-instance wake-up.** Instance A leads a flight whose origin is
//!    held; the waiting instances each have a request waiting on it through
//!    Redis (their subscriptions seen by the server). The origin is let go;
//!    it notes when it returns, each waiting caller when it is answered. A
//!    fresh key per sample, in one process.
//!
//! Options: `--instances 4`, `--requests 1000`, `--samples 200`,
//! `--waiters 1,4`. The output is markdown, with the machine it ran on.

use bytes::Bytes;
use coalesce_bench::report::{group, machine, ms, nearest_rank};
use coalesce_test_redis::{slot, RedisCluster, RedisServer};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer, HttpKey, KeyExtractor, RedisBackend};

type Req = Request<Full<Bytes>>;

/// What the instances share.
enum Target<'a> {
    Server(&'a RedisServer),
    Cluster(&'a RedisCluster),
}

impl Target<'_> {
    fn name(&self) -> &'static str {
        match self {
            Target::Server(_) => "one server",
            Target::Cluster(_) => "cluster, 3 masters",
        }
    }

    async fn backend(&self, namespace: &str) -> RedisBackend {
        let builder = match self {
            Target::Server(server) => RedisBackend::builder(server.url()),
            Target::Cluster(cluster) => RedisBackend::cluster_builder(cluster.urls()),
        };
        builder
            .namespace(namespace)
            .connect()
            .await
            .expect("cannot connect")
    }

    fn servers(&self) -> Vec<&RedisServer> {
        match self {
            Target::Server(server) => vec![server],
            Target::Cluster(cluster) => cluster.masters().into_iter().map(|(n, _)| n).collect(),
        }
    }

    fn reset_stats(&self) {
        match self {
            Target::Server(server) => server.reset_stats(),
            Target::Cluster(cluster) => cluster.reset_stats(),
        }
    }

    fn commands(&self) -> u64 {
        let except = ["info", "config", "cluster", "ping", "pubsub"];
        self.servers()
            .iter()
            .map(|node| node.commands(&except))
            .sum()
    }

    /// Connections listening on `channel`, where its messages are sent.
    fn subscribers(&self, channel: &str) -> u64 {
        let (node, kind) = match self {
            Target::Server(server) => (*server, "NUMSUB"),
            Target::Cluster(cluster) => (
                cluster
                    .master_of(slot(channel))
                    .expect("every slot is served"),
                "SHARDNUMSUB",
            ),
        };
        let (_, n): (String, u64) = redis::cmd("PUBSUB")
            .arg(kind)
            .arg(channel)
            .query(&mut node.conn())
            .expect("PUBSUB");
        n
    }
}

/// An origin whose every path is held until let go; it notes when each
/// path's answer returned.
#[derive(Default)]
struct Origin {
    calls: AtomicUsize,
    gates: Mutex<HashMap<String, Arc<Semaphore>>>,
    returned: Mutex<HashMap<String, Instant>>,
}

impl Origin {
    fn gate(&self, path: &str) -> Arc<Semaphore> {
        let mut gates = self.gates.lock().unwrap();
        gates
            .entry(path.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(0)))
            .clone()
    }

    fn open(&self, path: &str) {
        self.gate(path).add_permits(Semaphore::MAX_PERMITS / 2);
    }

    fn returned(&self, path: &str) -> Option<Instant> {
        self.returned.lock().unwrap().get(path).copied()
    }

    fn service(
        self: &Arc<Self>,
    ) -> impl tower::Service<
        Req,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
    > + Clone
           + Send
           + 'static {
        let me = self.clone();
        tower::service_fn(move |req: Req| {
            let me = me.clone();
            async move {
                me.calls.fetch_add(1, Ordering::SeqCst);
                let path = req.uri().path().to_owned();
                let _permit = me.gate(&path).acquire_owned().await.expect("never closed");
                let res = Response::new(Full::new(Bytes::from(path.clone())));
                me.returned.lock().unwrap().insert(path, Instant::now());
                Ok(res)
            }
        })
    }
}

struct Instance {
    layer: CoalesceLayer,
    backend: RedisBackend,
}

async fn instances(target: &Target<'_>, namespace: &str, n: usize) -> Vec<Instance> {
    let mut all = Vec::new();
    for _ in 0..n {
        let backend = target.backend(namespace).await;
        let layer = CoalesceLayer::new(
            CoalesceConfig::new()
                .ttl(Duration::from_secs(60))
                .backend(backend.clone()),
        );
        all.push(Instance { layer, backend });
    }
    all
}

fn request(path: &str) -> Req {
    Request::get(path).body(Full::new(Bytes::new())).unwrap()
}

async fn wait_for(cond: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

static NAMESPACES: AtomicUsize = AtomicUsize::new(0);

fn fresh_namespace() -> String {
    format!(
        "bench-{}-{}",
        std::process::id(),
        NAMESPACES.fetch_add(1, Ordering::SeqCst)
    )
}

/// One cold burst: `requests` over `n` instances; (origin calls, commands).
async fn burst(target: &Target<'_>, n: usize, requests: usize) -> (usize, u64) {
    let origin = Arc::new(Origin::default());
    let instances = instances(target, &fresh_namespace(), n).await;
    target.reset_stats();
    let mut tasks = Vec::new();
    for i in 0..requests {
        let svc = instances[i % n].layer.layer(origin.service());
        tasks.push(tokio::spawn(svc.oneshot(request("/burst"))));
    }
    let joined = || {
        let s: Vec<_> = instances.iter().map(|i| i.layer.stats()).collect();
        s.iter().map(|s| s.followers).sum::<u64>() == (requests - n) as u64
            && s.iter().map(|s| s.remote_waits).sum::<u64>() == (n - 1) as u64
    };
    wait_for(
        || joined() && origin.calls.load(Ordering::SeqCst) == 1,
        "the burst gathered",
    )
    .await;
    origin.open("/burst");
    for task in tasks {
        let res = task.await.unwrap().unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "/burst", "a wrong answer");
    }
    (origin.calls.load(Ordering::SeqCst), target.commands())
}

/// Wake-up samples: one leader instance, `waiters` waiting instances.
async fn wakeups(target: &Target<'_>, waiters: usize, samples: usize) -> Vec<Duration> {
    let origin = Arc::new(Origin::default());
    let instances = instances(target, &fresh_namespace(), 1 + waiters).await;
    let mut out = Vec::with_capacity(samples * waiters);
    for sample in 0..samples {
        let path = format!("/wake/{sample}");
        let key = HttpKey::new().extract(&request(&path)).unwrap();
        let channel = instances[0].backend.done_channel(&key);
        let lead = tokio::spawn(
            instances[0]
                .layer
                .layer(origin.service())
                .oneshot(request(&path)),
        );
        wait_for(
            || origin.calls.load(Ordering::SeqCst) == sample + 1,
            "the leader's call",
        )
        .await;
        let mut waiting = Vec::new();
        for instance in &instances[1..] {
            let svc = instance.layer.layer(origin.service());
            let path = path.clone();
            waiting.push(tokio::spawn(async move {
                let res = svc.oneshot(request(&path)).await.unwrap();
                let at = Instant::now();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, path.as_str(), "a wrong answer");
                at
            }));
        }
        wait_for(
            || target.subscribers(&channel) == waiters as u64,
            "the waiters' subscriptions",
        )
        .await;
        origin.open(&path);
        lead.await.unwrap().unwrap();
        let returned = origin.returned(&path).expect("the origin returned");
        for task in waiting {
            out.push(task.await.unwrap().saturating_duration_since(returned));
        }
    }
    assert_eq!(
        origin.calls.load(Ordering::SeqCst),
        samples,
        "one origin call per sample"
    );
    out
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    nearest_rank(sorted, q).unwrap_or_default()
}

fn number_list(value: &str) -> Vec<usize> {
    value
        .split(',')
        .map(|v| v.trim().parse().expect("a list of numbers"))
        .collect()
}

fn main() {
    let mut instances_n = 4;
    let mut requests = 1_000;
    let mut samples = 200;
    let mut waiters = vec![1, 4];
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--instances" => instances_n = value().parse().expect("a number"),
            "--requests" => requests = value().parse().expect("a number"),
            "--samples" => samples = value().parse().expect("a number"),
            "--waiters" => waiters = number_list(&value()),
            other => panic!("unknown option {other}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start();
    let cluster = RedisCluster::start();
    let version: String = redis::cmd("INFO")
        .arg("server")
        .query::<String>(&mut server.conn())
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("redis_version:").map(str::to_owned))
        })
        .unwrap_or_default();
    println!("- machine: {}; Redis {version} on loopback", machine());
    runtime.block_on(async {
        let targets = [Target::Server(&server), Target::Cluster(&cluster)];
        println!();
        println!("| Redis | instances | requests | origin calls | commands | per instance |");
        println!("|---|---|---|---|---|---|");
        for target in &targets {
            // Loads the scripts.
            burst(target, instances_n, requests).await;
            let (calls, commands) = burst(target, instances_n, requests).await;
            println!(
                "| {} | {instances_n} | {} | {calls} | {commands} | {:.1} |",
                target.name(),
                group(requests),
                commands as f64 / instances_n as f64
            );
        }
        println!();
        println!("| Redis | waiting instances | samples | wake-up p50 | p90 | p99 | max |");
        println!("|---|---|---|---|---|---|---|");
        for &w in &waiters {
            for target in &targets {
                let mut all = wakeups(target, w, samples).await;
                all.sort_unstable();
                println!(
                    "| {} | {w} | {} | {} | {} | {} | {} |",
                    target.name(),
                    all.len(),
                    ms(percentile(&all, 0.5)),
                    ms(percentile(&all, 0.9)),
                    ms(percentile(&all, 0.99)),
                    ms(*all.last().unwrap())
                );
            }
        }
    });
    println!(
        "\nload average at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}

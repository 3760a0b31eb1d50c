//! How coalescing across instances scales, in counts: instances as child
//! processes, several hot keys at once, and many requests per key, on one
//! Redis server and on a Redis Cluster. For each burst: the origin calls
//! (must equal the keys) and the Redis commands (should grow with
//! instances × keys, and not with requests).
//!
//! ```text
//! cargo run --release -p coalesce-bench --bin scale_bench
//! cargo run --release -p coalesce-bench --bin scale_bench -- --instances 2,4 --shapes 1x10,100x100
//! ```
//!
//! It starts its own redis-server and a cluster of three masters with a
//! replica each (`redis-server`, `redis-cli` on the `PATH`), and for each
//! instance count as many child processes (this program re-executed with
//! `--child`), each a `CoalesceLayer` with its own `RedisBackend`, driven
//! over pipes. A burst: statistics reset on every node, then every child
//! sends its share of the requests for every key at once — `per key`
//! requests per key in all, spread evenly over the instances, at least one
//! each — and holds its origin until every child's requests have joined a
//! flight (this process's or another's through Redis); then the origins
//! answer. Commands are the sum of `calls=` in `INFO commandstats` over the
//! server or the cluster's masters, less the benchmark's and the clients'
//! housekeeping (`INFO`, `CONFIG`, `CLUSTER`, `PING`, `CLIENT`, `PUBSUB`).
//! Wall times on a shared two-core machine mean little; they are left out.
//! The instances' `backend_timeout` and Redis response timeout are 5 s by
//! default here, so that the counts are the protocol's alone;
//! `--default-timeouts` runs the library's (250 ms, waiting on a Redis that
//! answers late), which is what a saturated machine tests: sixteen
//! processes with a thousand keys at once on two cores.
//!
//! Options: `--instances 2,4,8,16`, `--shapes KEYSxPERKEY,...` (default
//! `1x10,1x10000,100x10,100x1000,1000x10,1000x100`), `--only server|cluster`,
//! `--default-timeouts` (the library's timeouts instead of 5 s).

use bytes::Bytes;
use coalesce_bench::report::{group, machine};
use coalesce_test_redis::{RedisCluster, RedisServer};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer, RedisBackend};

/// Commands that are not the bursts': the benchmark's own inspection, the
/// heartbeat (`CLIENT ID`), the cluster client's topology checks.
const HOUSEKEEPING: &[&str] = &["info", "config", "cluster", "ping", "client", "pubsub"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(child(&args[1..]));
        return;
    }
    let mut instances = vec![2, 4, 8, 16];
    let mut shapes = vec![
        (1, 10),
        (1, 10_000),
        (100, 10),
        (100, 1_000),
        (1_000, 10),
        (1_000, 100),
    ];
    let mut only = None;
    let mut defaults = false;
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        if flag == "--default-timeouts" {
            defaults = true;
            continue;
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--instances" => {
                instances = value
                    .split(',')
                    .map(|v| v.parse().expect("a number"))
                    .collect();
            }
            "--shapes" => {
                shapes = value
                    .split(',')
                    .map(|shape| {
                        let (keys, per_key) = shape.split_once('x').expect("KEYSxPERKEY");
                        (
                            keys.parse().expect("a number"),
                            per_key.parse().expect("a number"),
                        )
                    })
                    .collect();
            }
            "--only" => only = Some(value),
            other => panic!("unknown option {other}"),
        }
    }
    println!("- machine: {}", machine());
    println!();
    println!("| Redis | instances | keys | requests per key | requests | origin calls | commands | per instance per key |");
    println!("|---|---|---|---|---|---|---|---|");
    if only.as_deref() != Some("cluster") {
        let server = RedisServer::start();
        table(
            "one server",
            &[server.url()],
            &[&server],
            &instances,
            &shapes,
            defaults,
        );
    }
    if only.as_deref() != Some("server") {
        let cluster = RedisCluster::start();
        let masters: Vec<&RedisServer> = cluster.masters().into_iter().map(|(n, _)| n).collect();
        table(
            "cluster",
            &cluster.urls(),
            &masters,
            &instances,
            &shapes,
            defaults,
        );
    }
    println!(
        "\nload average at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}

/// Every instance count × shape on the Redis at `urls` (a server's URL, or
/// the cluster's nodes), counting commands on `counted`.
fn table(
    name: &str,
    urls: &[String],
    counted: &[&RedisServer],
    instances: &[usize],
    shapes: &[(usize, usize)],
    defaults: bool,
) {
    for &n in instances {
        let namespace = format!("scale-{}-{n}-{}", std::process::id(), name.len());
        let mut children: Vec<Instance> = (0..n)
            .map(|_| Instance::start(urls, &namespace, defaults))
            .collect();
        // A first burst loads the scripts and opens every connection.
        run_burst(&mut children, "warm", 1, 1);
        for (i, &(keys, per_key)) in shapes.iter().enumerate() {
            for node in counted {
                node.reset_stats();
            }
            let each = (per_key / n).max(1);
            let calls = run_burst(&mut children, &format!("b{i}"), keys, each);
            let commands: u64 = counted.iter().map(|node| node.commands(HOUSEKEEPING)).sum();
            println!(
                "| {name} | {n} | {} | {} | {} | {calls} | {} | {:.1} |",
                group(keys),
                group(each * n),
                group(keys * each * n),
                group(commands as usize),
                commands as f64 / (n * keys) as f64
            );
        }
    }
}

/// One burst over every child: returns the origin calls they made.
fn run_burst(children: &mut [Instance], tag: &str, keys: usize, each: usize) -> usize {
    for child in children.iter_mut() {
        child.send(&format!("burst {tag} {keys} {each}"));
    }
    for child in children.iter_mut() {
        child.expect("joined");
    }
    for child in children.iter_mut() {
        child.send("open");
    }
    let mut calls = 0;
    for child in children.iter_mut() {
        let line = child.expect("done");
        calls += line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<usize>().ok())
            .expect("done <calls>");
        if !line.contains("failed={}") || !line.contains("backend_errors=0 ") {
            eprintln!("  {tag}: {}", line.trim());
        }
    }
    calls
}

/// A child process: one instance.
struct Instance {
    process: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Instance {
    fn start(urls: &[String], namespace: &str, defaults: bool) -> Self {
        let mut process = Command::new(std::env::current_exe().expect("this program"))
            .arg("--child")
            .arg(urls.join(","))
            .arg(namespace)
            .arg(if defaults { "defaults" } else { "raised" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start a child");
        let input = process.stdin.take().unwrap();
        let output = BufReader::new(process.stdout.take().unwrap());
        let mut instance = Self {
            process,
            input,
            output,
        };
        instance.expect("ready");
        instance
    }

    fn send(&mut self, line: &str) {
        writeln!(self.input, "{line}").expect("the child is gone");
    }

    fn expect(&mut self, word: &str) -> String {
        let mut line = String::new();
        self.output.read_line(&mut line).expect("the child is gone");
        assert!(
            line.starts_with(word),
            "the child said {line:?}, not {word}"
        );
        line
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// An origin that holds every call until the burst's gate opens.
struct Origin {
    calls: AtomicUsize,
    gate: Mutex<Arc<Semaphore>>,
}

impl Origin {
    fn gate(&self) -> Arc<Semaphore> {
        self.gate.lock().unwrap().clone()
    }
}

/// The child's side: `--child <urls> <namespace>`, then commands on stdin.
async fn child(args: &[String]) {
    let urls: Vec<String> = args[0].split(',').map(str::to_owned).collect();
    let builder = if urls.len() == 1 {
        RedisBackend::builder(urls[0].clone())
    } else {
        RedisBackend::cluster_builder(urls)
    };
    // `--default-timeouts`: the library's own, to see a saturated machine.
    let timeout = if args.get(2).map(String::as_str) == Some("defaults") {
        None
    } else {
        Some(Duration::from_secs(5))
    };
    let mut builder = builder.namespace(args[1].clone());
    if let Some(timeout) = timeout {
        builder = builder.response_timeout(timeout);
    }
    let backend = builder.connect().await.expect("cannot connect");
    // Counts of the protocol, not of a two-core machine's queue: a thousand
    // keys at once over sixteen processes keep Redis answers waiting longer
    // than the default 250 ms, and each such flight would go on without
    // Redis (see BENCHMARKS.md).
    let mut config = CoalesceConfig::new()
        .ttl(Duration::from_secs(300))
        .wait_timeout(Duration::from_secs(120));
    if let Some(timeout) = timeout {
        config = config.backend_timeout(timeout);
    }
    let layer = CoalesceLayer::new(config.backend(backend));
    let origin = Arc::new(Origin {
        calls: AtomicUsize::new(0),
        gate: Mutex::new(Arc::new(Semaphore::new(0))),
    });
    let service = {
        let origin = origin.clone();
        tower::service_fn(move |req: Request<Full<Bytes>>| {
            let origin = origin.clone();
            async move {
                origin.calls.fetch_add(1, Ordering::SeqCst);
                let gate = origin.gate();
                let _permit = gate.acquire().await.expect("never closed");
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                    req.uri().path().to_owned(),
                ))))
            }
        })
    };
    let svc = layer.layer(service);
    println!("ready");
    let mut lines = BufReader::new(std::io::stdin()).lines();
    while let Some(Ok(line)) = lines.next() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["burst", tag, keys, each] = words[..] else {
            panic!("unexpected command {line:?}");
        };
        let (keys, each): (usize, usize) = (keys.parse().unwrap(), each.parse().unwrap());
        *origin.gate.lock().unwrap() = Arc::new(Semaphore::new(0));
        let (calls, before) = (origin.calls.load(Ordering::SeqCst), layer.stats());
        let mut tasks = Vec::with_capacity(keys * each);
        for k in 0..keys {
            for _ in 0..each {
                let path = format!("/{tag}/{k}");
                let svc = svc.clone();
                tasks.push(tokio::spawn(async move {
                    let req = Request::get(&path).body(Full::new(Bytes::new())).unwrap();
                    let res = svc.oneshot(req).await.unwrap();
                    let failed = res
                        .extensions()
                        .get::<tower_coalesce::FlightError>()
                        .map(|e| format!("{}:{:?}", res.status().as_u16(), e.kind()));
                    let body = res.into_body().collect().await.unwrap().to_bytes();
                    if failed.is_none() {
                        assert_eq!(body, path.as_str(), "a wrong answer");
                    }
                    failed
                }));
            }
        }
        // Joined: every key led here (its origin call held) or waited on
        // elsewhere, and every other request following.
        loop {
            let now = layer.stats();
            let led = origin.calls.load(Ordering::SeqCst) - calls;
            let waiting = (now.remote_waits - before.remote_waits) as usize;
            let following = (now.followers - before.followers) as usize;
            if led + waiting >= keys && following >= keys * (each - 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        println!("joined");
        assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("open"));
        origin.gate().add_permits(Semaphore::MAX_PERMITS / 2);
        let mut failed = std::collections::BTreeMap::<String, usize>::new();
        for task in tasks {
            if let Some(kind) = task.await.unwrap() {
                *failed.entry(kind).or_default() += 1;
            }
        }
        let after = layer.stats();
        println!(
            "done {} failed={failed:?} backend_errors={} wait_timeouts={} takeovers={}",
            origin.calls.load(Ordering::SeqCst) - calls,
            after.backend_errors - before.backend_errors,
            after.wait_timeouts - before.wait_timeouts,
            after.takeovers - before.takeovers,
        );
    }
}

//! A million concurrent requests for one resource: the database is queried once.
//!
//! ```text
//! cargo run --release --example million
//! cargo run --release --example million -- --redis redis://127.0.0.1:6379/ --instances 4
//! ```
//!
//! Options: `--requests N` (default 1,000,000), `--origin-ms MS` (how long the
//! "database query" takes, default 2,000), `--redis URL` (or
//! `--redis-cluster URL[,URL...]`, some nodes of a Redis Cluster) with
//! `--instances N` (default 4) to spread the requests over N layer instances
//! that share it, as N processes would, and `--ttl-ms MS` (default 0 in one process:
//! coalesce only; 10,000 with Redis, since instances hand the answer to each
//! other through the stored entry).
//!
//! Every request is a task of its own, as a server's connections would be, and
//! all of them are sent before the query returns. A progress line shows them
//! being sent and answered; the summary gives the origin calls, the wall time,
//! the fan-out time (from the query's return to the last answer), the peak
//! memory of the process and, with Redis, the Redis commands the burst cost.

#[path = "support/report.rs"]
mod report;
use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use report::{group, ms, peak_rss_bytes};
use std::convert::Infallible;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer, RedisBackend, Stats};

const BODY: &[u8] = b"{\"id\":7,\"name\":\"Espresso machine\",\"price_cents\":34900,\"stock\":12}";

/// Where the instances share flights: one Redis server, or a cluster.
enum Shared {
    Server(String),
    Cluster(Vec<String>),
}

impl std::fmt::Display for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shared::Server(url) => write!(f, "the Redis at {url}"),
            Shared::Cluster(nodes) => write!(f, "the Redis Cluster at {}", nodes.join(",")),
        }
    }
}

struct Args {
    requests: usize,
    origin: Duration,
    redis: Option<Shared>,
    instances: usize,
    ttl: Option<Duration>,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = Args {
            requests: 1_000_000,
            origin: Duration::from_millis(2_000),
            redis: None,
            instances: 0,
            ttl: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or(format!("{flag} needs a value"));
            let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
            match flag.as_str() {
                "--requests" => args.requests = number(value()?)? as usize,
                "--origin-ms" => args.origin = Duration::from_millis(number(value()?)?),
                "--redis" => args.redis = Some(Shared::Server(value()?)),
                "--redis-cluster" => {
                    let nodes = value()?.split(',').map(str::to_owned).collect();
                    args.redis = Some(Shared::Cluster(nodes));
                }
                "--instances" => args.instances = number(value()?)? as usize,
                "--ttl-ms" => args.ttl = Some(Duration::from_millis(number(value()?)?)),
                "-h" | "--help" => {
                    return Err("usage: million [--requests N] [--origin-ms MS] \
                                [--redis URL | --redis-cluster URL[,URL...] [--instances N]] [--ttl-ms MS]"
                        .into())
                }
                other => return Err(format!("unknown option {other}; try --help")),
            }
        }
        if args.requests == 0 {
            return Err("--requests must be at least 1".into());
        }
        if args.instances == 0 {
            args.instances = if args.redis.is_some() { 4 } else { 1 };
        }
        if args.instances > 1 && args.redis.is_none() {
            return Err(
                "--instances needs --redis or --redis-cluster: instances share flights through it"
                    .into(),
            );
        }
        Ok(args)
    }
}

/// The run's shared state: the origin's and every request's. It lives as
/// long as the process, so a request holds a plain reference to it (no
/// reference count to update) and no handle or result of its own.
struct Run {
    start: Instant,
    total: usize,
    query: Duration,
    calls: AtomicUsize,
    /// When the query returned, from the start.
    returned_at: OnceLock<Duration>,
    sent: AtomicUsize,
    answered: AtomicUsize,
    wrong: AtomicUsize,
    /// Nanoseconds from the start to the last answer.
    last_answer: AtomicU64,
    all_answered: tokio::sync::Notify,
}

impl Run {
    fn answer(&self, ok: bool) {
        if !ok {
            self.wrong.fetch_add(1, Ordering::Relaxed);
        }
        if self.answered.fetch_add(1, Ordering::AcqRel) + 1 == self.total {
            let now = self.start.elapsed().as_nanos() as u64;
            self.last_answer.store(now, Ordering::Relaxed);
            self.all_answered.notify_one();
        }
    }
}

#[tokio::main]
pub async fn main() {
    let args = Args::parse().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let ttl = args.ttl.unwrap_or(if args.redis.is_some() {
        Duration::from_secs(10)
    } else {
        Duration::ZERO
    });
    let run: &'static Run = Box::leak(Box::new(Run {
        start: Instant::now(),
        total: args.requests,
        query: args.origin,
        calls: AtomicUsize::new(0),
        returned_at: OnceLock::new(),
        sent: AtomicUsize::new(0),
        answered: AtomicUsize::new(0),
        wrong: AtomicUsize::new(0),
        last_answer: AtomicU64::new(0),
        all_answered: tokio::sync::Notify::new(),
    }));
    // The "database query": counted, and slow.
    let origin = tower::service_fn(move |_req: Request<Empty<Bytes>>| async move {
        run.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(run.query).await;
        let _ = run.returned_at.set(run.start.elapsed());
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(BODY)))
                .unwrap(),
        )
    });

    // A namespace of its own per run, so every run is a cold burst: an
    // answer stored by an earlier run must not answer this one.
    let namespace = format!(
        "million-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let mut layers = Vec::new();
    for _ in 0..args.instances {
        let mut config = CoalesceConfig::new().ttl(ttl);
        if let Some(shared) = &args.redis {
            let builder = match shared {
                Shared::Server(url) => RedisBackend::builder(url.clone()),
                Shared::Cluster(nodes) => RedisBackend::cluster_builder(nodes.clone()),
            };
            let backend = builder
                .namespace(namespace.clone())
                .connect()
                .await
                .unwrap_or_else(|e| {
                    eprintln!("cannot use {shared}: {e}");
                    std::process::exit(1)
                });
            config = config.backend(backend);
        }
        layers.push(CoalesceLayer::new(config));
    }
    let redis_before = match &args.redis {
        Some(shared) => Some(redis_commands(shared).await.unwrap_or_else(|e| {
            eprintln!("cannot reach {shared}: {e}");
            std::process::exit(1)
        })),
        None => None,
    };
    let services: Vec<_> = layers.iter().map(|l| l.layer(origin)).collect();
    let rss_before = peak_rss_bytes();

    println!(
        "{} concurrent requests for /products/7 over {} instance{}{}, the query takes {} ms",
        group(args.requests),
        args.instances,
        if args.instances == 1 { "" } else { "s" },
        match &args.redis {
            Some(shared) => format!(" sharing {shared}"),
            None => " (embedded backend)".to_owned(),
        },
        args.origin.as_millis()
    );

    let progress = tokio::spawn(progress(run));
    let start_sending = Instant::now();
    // One sender per worker thread, as requests arrive on every core.
    let senders = std::thread::available_parallelism().map_or(2, |n| n.get());
    let sending: Vec<_> = (0..senders)
        .map(|first| {
            let services = services.clone();
            tokio::spawn(async move {
                for i in (first..run.total).step_by(senders) {
                    send(run, services[i % services.len()].clone());
                }
            })
        })
        .collect();
    for sender in sending {
        sender.await.expect("sending requests");
    }
    let sent_in = start_sending.elapsed();
    run.all_answered.notified().await;
    let wall = run.start.elapsed();
    progress.abort();
    let _ = progress.await;

    let returned = run.returned_at.get().copied();
    let last = Duration::from_nanos(run.last_answer.load(Ordering::Relaxed));
    let peak = peak_rss_bytes();
    let (flights, followers, hits, backend_errors) =
        layers
            .iter()
            .map(CoalesceLayer::stats)
            .fold((0, 0, 0, 0), |(f, w, h, e), s: Stats| {
                (
                    f + s.flights,
                    w + s.followers,
                    h + s.hits,
                    e + s.backend_errors,
                )
            });
    let wrong = run.wrong.load(Ordering::Relaxed);

    eprint!("\r{:80}\r", "");
    println!();
    row("requests", group(args.requests));
    row("origin calls", group(run.calls.load(Ordering::SeqCst)));
    row(
        "answers",
        format!(
            "{} correct, {} wrong (leaders {}, followers {}, hits {})",
            group(args.requests - wrong),
            group(wrong),
            group(flights as usize),
            group(followers as usize),
            group(hits as usize)
        ),
    );
    row("all sent after", ms(sent_in));
    row("wall time", ms(wall));
    match returned {
        Some(returned) => row(
            "fan-out",
            format!(
                "{} (query return -> last answer)",
                ms(last.saturating_sub(returned))
            ),
        ),
        None => row("fan-out", "the query never returned".to_owned()),
    }
    match (rss_before, peak) {
        (Some(before), Some(peak)) => row(
            "peak RSS",
            format!(
                "{:.0} MiB ({:.0} MiB before the burst; {} bytes per request)",
                peak as f64 / 1048576.0,
                before as f64 / 1048576.0,
                group((peak.saturating_sub(before) / args.requests as u64) as usize)
            ),
        ),
        _ => row("peak RSS", "unknown (no /proc/self/status)".to_owned()),
    }
    if let (Some(shared), Some(before)) = (&args.redis, redis_before) {
        if backend_errors > 0 {
            row(
                "backend errors",
                format!("{backend_errors} (Redis did not answer within backend_timeout; those flights went on locally)"),
            );
        }
        match redis_commands(shared).await {
            Ok(after) => {
                let used = after.saturating_sub(before).saturating_sub(1);
                row(
                    "Redis commands",
                    format!(
                        "{used} ({:.1} per instance)",
                        used as f64 / args.instances as f64
                    ),
                );
            }
            Err(e) => row("Redis commands", format!("unknown ({e})")),
        }
    }
    if wrong > 0 {
        std::process::exit(1);
    }
}

/// Sends one request, in a task of its own as a server's connection would be.
fn send<S, B>(run: &'static Run, svc: S)
where
    S: tower::Service<Request<Empty<Bytes>>, Response = Response<B>> + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
{
    let req = Request::get("/products/7").body(Empty::new()).unwrap();
    // A combinator rather than an `async` block around the call: the task
    // then holds the request's future once, not also a moved copy of it.
    let task = svc.oneshot(req).then(move |res| {
        // Read through a box: the wait is over by then, and the waiting
        // task stays small.
        let body = match res {
            Ok(res) if res.status() == StatusCode::OK => Some(Box::pin(res.into_body().collect())),
            _ => None,
        };
        async move {
            let ok = match body {
                Some(body) => body.await.is_ok_and(|b| b.to_bytes() == BODY),
                None => false,
            };
            run.answer(ok);
        }
    });
    tokio::spawn(task);
    run.sent.fetch_add(1, Ordering::Relaxed);
}

async fn progress(run: &'static Run) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        eprint!(
            "\r  sent {:>9} / {}   answered {:>9}   origin calls {}   ",
            group(run.sent.load(Ordering::Relaxed)),
            group(run.total),
            group(run.answered.load(Ordering::Relaxed)),
            run.calls.load(Ordering::Relaxed)
        );
        let _ = std::io::stderr().flush();
    }
}

/// Commands Redis has executed so far, from `INFO commandstats`: on a
/// cluster, summed over its masters (replicas replay their writes), less
/// the client's topology checks.
async fn redis_commands(shared: &Shared) -> redis::RedisResult<u64> {
    let servers = match shared {
        Shared::Server(url) => vec![url.clone()],
        Shared::Cluster(nodes) => cluster_masters(&nodes[0]).await?,
    };
    let mut calls = 0;
    for url in servers {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await?;
        calls += report::command_calls(&info)
            .filter(|(name, _)| !matches!(*name, "info" | "cluster"))
            .map(|(_, calls)| calls)
            .sum::<u64>();
    }
    Ok(calls)
}

/// The URLs of a cluster's masters that serve slots, from `CLUSTER NODES`
/// on the node at `seed`.
async fn cluster_masters(seed: &str) -> redis::RedisResult<Vec<String>> {
    let client = redis::Client::open(seed)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await?;
    Ok(nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let serves = fields.len() > 8 && fields[2].contains("master");
            let address = fields.get(1)?.split('@').next()?;
            serves.then(|| format!("redis://{address}/"))
        })
        .collect())
}

fn row(name: &str, value: String) {
    println!("  {name:<16} {value}");
}

//! Bursts whose answer is not stored, over instances sharing a Redis: how
//! many origin calls they cost and how long the worst caller waits.
//!
//! ```text
//! cargo run --release -p coalesce-bench --bin unshared_bench -- --redis redis://127.0.0.1:6379/
//! ```
//!
//! Each run: 4 instances (a `CoalesceLayer` with a `RedisBackend` of its own
//! each, as separate processes would have), a fresh namespace, an origin that
//! takes 300 ms, and 100 concurrent requests for one key spread round-robin
//! over the instances, the first instance leading. Two answers:
//! - `503`: shared with the flight but never stored; waiting instances get it
//!   in the completion message, so the burst should cost one origin call and
//!   the worst caller about one origin call;
//! - `Cache-Control: private`: nobody may share it; waiting instances are
//!   told to call the origin themselves, at once, so every caller costs a
//!   call and the worst waits about two origin calls.
//!
//! Options: `--runs N` (default 7), `--redis URL` (required; give it a
//! server nothing else uses).

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer, Outcome, RedisBackend};

const INSTANCES: usize = 4;
const REQUESTS: usize = 100;
const ORIGIN: Duration = Duration::from_millis(300);

#[tokio::main]
async fn main() -> Result<(), String> {
    let mut runs = 7;
    let mut redis = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--runs" => runs = value.parse().map_err(|_| "--runs: a number")?,
            "--redis" => redis = Some(value),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let url = redis.ok_or("--redis URL is required")?;
    println!(
        "{INSTANCES} instances, {REQUESTS} concurrent requests for one key, origin {}, {runs} runs each\n",
        coalesce_bench::report::ms(ORIGIN)
    );
    println!("| answer | origin calls per burst (median) | worst caller, median of runs | worst caller, worst run | takeovers |");
    println!("|---|---|---|---|---|");
    for (label, private) in [("503, not stored", false), ("200, private", true)] {
        let mut calls = Vec::new();
        let mut worst = Vec::new();
        let mut takeovers = 0;
        for run in 0..runs {
            let r = burst(
                &url,
                &format!("bench-unshared-{}-{run}-{}", private, std::process::id()),
                private,
            )
            .await?;
            calls.push(r.calls);
            worst.push(r.worst);
            takeovers += r.takeovers;
        }
        calls.sort_unstable();
        worst.sort_unstable();
        println!(
            "| {label} | {} | {} | {} | {takeovers} |",
            calls[calls.len() / 2],
            coalesce_bench::report::ms(worst[worst.len() / 2]),
            coalesce_bench::report::ms(*worst.last().unwrap()),
        );
    }
    Ok(())
}

struct Run {
    calls: usize,
    worst: Duration,
    takeovers: u64,
}

async fn burst(url: &str, namespace: &str, private: bool) -> Result<Run, String> {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        let backend = RedisBackend::builder(url)
            .namespace(namespace)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let layer = CoalesceLayer::new(
            CoalesceConfig::new()
                .ttl(Duration::from_secs(60))
                .backend(backend),
        );
        let counted = calls.clone();
        let origin = tower::service_fn(move |_req: Request<Empty<Bytes>>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(ORIGIN).await;
                let res = if private {
                    Response::builder().header("cache-control", "private")
                } else {
                    Response::builder().status(StatusCode::SERVICE_UNAVAILABLE)
                };
                Ok::<_, std::convert::Infallible>(res.body(Full::new(Bytes::from("x"))).unwrap())
            }
        });
        let svc = layer.layer(origin);
        instances.push((layer, svc));
    }
    let start = Instant::now();
    let send = |i: usize| {
        let svc = instances[i % INSTANCES].1.clone();
        tokio::spawn(async move {
            let req = Request::get("/unshared").body(Empty::new()).unwrap();
            let res = svc.oneshot(req).await.unwrap();
            let _ = res.extensions().get::<Outcome>();
            start.elapsed()
        })
    };
    let mut tasks = vec![send(0)];
    // The first instance leads before the others ask.
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tasks.extend((1..REQUESTS).map(send));
    let mut worst = Duration::ZERO;
    for task in tasks {
        worst = worst.max(task.await.map_err(|e| e.to_string())?);
    }
    Ok(Run {
        calls: calls.load(Ordering::SeqCst),
        worst,
        takeovers: instances.iter().map(|(l, _)| l.stats().takeovers).sum(),
    })
}

//! What purging costs and how fast it reaches other instances, on a real
//! `redis-server` (started on a free loopback port, as the tests do).
//!
//! ```text
//! cargo run --release -p coalesce-bench --bin purge_bench [-- --samples 1000 --entries 100000]
//! ```
//!
//! Every instance is a `CoalesceLayer` with a `RedisBackend` of its own
//! (its own connection), as separate processes would have.
//!
//! 1. **Propagation.** Instance B holds an answer in its near cache;
//!    instance A purges its tag. Timed from A's `purge_tag` returning to
//!    the answer being gone from B's near cache (`Store::get_local`, polled
//!    in a loop), a fresh key and tag per sample.
//! 2. **A tag of many entries.** `--entries` answers, all tagged `big`,
//!    stored through instance B (and so in Redis and B's near cache); then
//!    one `purge_tag("big")` through A: its time, the Redis commands it cost
//!    (`INFO commandstats`, scripts' inner commands included), and that no
//!    instance serves any of them afterwards — every key is checked in B's
//!    near cache, and through a third instance C, which never saw them,
//!    every key is looked up in Redis and judged.

use bytes::Bytes;
use coalesce_bench::report::{command_calls, group, ms};
use coalesce_test_redis::RedisServer;
use http::{Request, Response};
use http_body_util::Full;
use std::convert::Infallible;
use std::time::{Duration, Instant};
use tower::{Layer, ServiceExt};
use tower_coalesce::{
    CoalesceConfig, CoalesceLayer, HttpKey, Key, KeyExtractor, RedisBackend, Store,
};

type Svc = tower::util::BoxCloneService<
    Request<Full<Bytes>>,
    Response<tower_coalesce::CoalesceBody<Full<Bytes>>>,
    Infallible,
>;

/// An origin that tags each answer with its query (`/k?t` → tag `t`).
async fn tagged(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let tag = req.uri().query().unwrap_or("none").to_owned();
    let mut res = Response::new(Full::new(Bytes::from_static(b"answer")));
    res.headers_mut()
        .insert("surrogate-key", tag.parse().expect("a header value"));
    Ok(res)
}

async fn instance(url: &str) -> (CoalesceLayer, Svc, RedisBackend) {
    let backend = RedisBackend::builder(url.to_owned())
        .near_cache(
            tower_coalesce::MemoryBackend::builder()
                .max_entries(1_000_000)
                .max_bytes(1 << 30)
                .build(),
        )
        .connect()
        .await
        .expect("Redis");
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(600))
            .tag_header(http::HeaderName::from_static("surrogate-key"))
            .backend(backend.clone()),
    );
    let svc = Svc::new(layer.layer(tower::service_fn(tagged)));
    (layer, svc, backend)
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::new(Bytes::new())).unwrap()
}

fn key(uri: &str) -> Key {
    HttpKey::new().extract(&get(uri)).expect("a key")
}

fn commands(server: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.conn())
        .unwrap();
    command_calls(&info)
        .filter(|(name, _)| !name.starts_with("info"))
        .map(|(_, n)| n)
        .sum()
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let mut samples = 1_000usize;
    let mut entries = 100_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse().ok());
        match (flag.as_str(), value) {
            ("--samples", Some(n)) => samples = n,
            ("--entries", Some(n)) => entries = n,
            _ => {
                eprintln!("usage: purge_bench [--samples N] [--entries N]");
                std::process::exit(2);
            }
        }
    }
    let server = RedisServer::start();
    let url = server.url();
    let (a, _, _) = instance(&url).await;
    let (_, svc_b, backend_b) = instance(&url).await;
    println!("# purge_bench");
    println!(
        "- machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_owned())
            )
            .unwrap_or_default()
    );

    // 1. Propagation.
    let mut took = Vec::with_capacity(samples);
    for i in 0..samples {
        let uri = format!("/p{i}?t{i}");
        svc_b.clone().oneshot(get(&uri)).await.unwrap();
        let k = key(&uri);
        assert!(backend_b.get_local(&k).is_some(), "held near");
        a.purger().purge_tag(&format!("t{i}")).await.unwrap();
        let returned = Instant::now();
        while backend_b.get_local(&k).is_some() {
            tokio::task::yield_now().await;
        }
        took.push(returned.elapsed());
    }
    took.sort();
    println!(
        "\n## Propagation: purge_tag returned → gone from another instance's near cache ({} samples)",
        group(samples)
    );
    println!(
        "p50 {}, p99 {}, max {}",
        ms(quantile(&took, 0.5)),
        ms(quantile(&took, 0.99)),
        ms(*took.last().unwrap())
    );

    // 2. A tag of many entries.
    let filling = Instant::now();
    let uris: Vec<String> = (0..entries).map(|i| format!("/big/{i}?big")).collect();
    for chunk in uris.chunks(500) {
        let calls = chunk.iter().map(|uri| svc_b.clone().oneshot(get(uri)));
        futures_util::future::join_all(calls).await;
    }
    let keys: Vec<Key> = uris.iter().map(|u| key(u)).collect();
    let held = keys
        .iter()
        .filter(|k| backend_b.get_local(k).is_some())
        .count();
    println!(
        "\n## One tag on {} entries (stored in {:.1} s; {} held in B's near cache)",
        group(entries),
        filling.elapsed().as_secs_f64(),
        group(held)
    );
    let before = commands(&server);
    let start = Instant::now();
    let purged = a.purger().purge_tag("big").await.unwrap();
    let purge_took = start.elapsed();
    let cost = commands(&server) - before;
    println!(
        "purge_tag(\"big\"): {} (position {}), {} Redis commands (the EVALSHA and those its script ran)",
        ms(purge_took),
        purged.position,
        cost
    );
    // B drops them as it judges them, once the message is in.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let served_b = keys
        .iter()
        .filter(|k| backend_b.get_local(k).is_some())
        .count();
    // C never saw them: it reads each from Redis and judges it.
    let (_, _, backend_c) = instance(&url).await;
    let mut served_c = 0;
    for k in &keys {
        if let Some(entry) = backend_c.lookup(k).await.unwrap() {
            if tower_coalesce::Invalidation::purged(&backend_c, k, &entry).is_none() {
                served_c += 1;
            }
        }
    }
    println!(
        "served afterwards: {} of {} in B's near cache, {} of {} read from Redis by a new instance C",
        served_b,
        group(entries),
        served_c,
        group(entries)
    );
}

//! What coalescing across instances costs and how fast it is: the Redis
//! commands a cold burst uses, and how soon an instance waiting on another
//! instance's flight is answered once that flight's origin call returns.
//!
//! ```text
//! cargo run --release -p coalesce-bench --bin distributed_bench
//! cargo run --release -p coalesce-bench --bin distributed_bench -- --redis redis://127.0.0.1:6379/
//! ```
//!
//! It needs a real `redis-server`. Without `--redis` it starts one on the
//! `PATH` (`apt-get install -y redis-server`) on a free loopback port, without
//! persistence, and stops it at exit (also on Ctrl-C). With `--redis URL` it
//! uses that server and resets its statistics (`CONFIG RESETSTAT`) before every
//! burst, so give it a server nothing else uses.
//!
//! Every instance is a `CoalesceLayer` with a `RedisBackend` of its own, hence
//! a Redis connection of its own, as separate processes would have; `ttl` is
//! 60 s, since instances hand answers to each other through the stored entry.
//!
//! 1. **Redis commands per burst.** For each instance count and burst size, a
//!    fresh namespace (so every burst is cold), `CONFIG RESETSTAT`, then all
//!    the requests at once, spread round-robin over the instances, for one
//!    key. The origin holds its answer until every request has joined a
//!    flight, then the sum of `calls=` in `INFO commandstats` is read, less
//!    the benchmark's own commands (`CONFIG RESETSTAT`, `PUBSUB NUMSUB`,
//!    `ECHO`; `INFO` does not count itself). That count includes opening each
//!    instance's connection, and counts a Lua script's `EVALSHA` and every
//!    command the script runs. A `MONITOR` connection open during the burst
//!    tells the commands the instances sent (round trips) from those run
//!    inside scripts, and gives the command sequence of the first burst. One
//!    unreported burst runs first, so that the scripts are in the server's
//!    script cache, as on a server in use.
//! 2. **Cross-instance wake-up.** Instance A leads a flight whose origin is
//!    held by a gate; instances B… each have a request waiting on it through
//!    Redis (checked with `PUBSUB NUMSUB` on the done channel). The gate
//!    opens; the origin notes when it returns, each waiting instance's caller
//!    notes when it has its response. A fresh key per sample. In one process
//!    with separate connections, and then with the waiting instances in child
//!    processes (this example re-executed, driven over pipes; the processes
//!    compare wall-clock timestamps). A baseline without the layer, a plain
//!    `PUBLISH` to a subscriber task timed after each sample, shows what the
//!    machine allowed in the same stretch of time.
//!    With `--trace`, the series run again with a `MONITOR` connection open,
//!    whose per-command timestamps split each wake-up into the leader's part
//!    (up to the done message's `PUBLISH`) and the waiting instance's part.
//!
//! Options: `--instances 2,4,8`, `--requests 1000,10000,100000`,
//! `--samples 200`, `--waiters 1,4`, `--only burst|wakeup`, `--no-process`
//! (skip the child-process variant), `--trace`, `--redis URL`.
//!
//! The output is markdown, with the machine it ran on. The machine's load
//! matters (a shared 2-core VM is noisy): the load average at the start and
//! the end, and each series' CPU use and steal time (from `/proc/stat`), are
//! printed with the figures.

use bytes::Bytes;
use coalesce_bench::report::{group, ms};
use coalesce_test_redis::RedisServer;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, Semaphore};
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer, HttpKey, KeyExtractor, Outcome, RedisBackend};

type Req = Request<Empty<Bytes>>;

/// Commands the benchmark itself sends while a burst is counted (the names
/// `INFO commandstats` gives them).
const OWN_COMMANDS: [&str; 4] = ["config|resetstat", "pubsub|numsub", "info", "echo"];
/// Commands that open a connection rather than serve a request: `HELLO`
/// (and `CLIENT SETINFO`) from the client library; `PING` and `SCRIPT LOAD`
/// from `RedisBackend::connect`, which opens its connection and loads its
/// scripts up front.
const SET_UP_COMMANDS: [&str; 4] = ["hello", "client|setinfo", "ping", "script|load"];

struct Args {
    redis: Option<String>,
    instances: Vec<usize>,
    requests: Vec<usize>,
    samples: usize,
    waiters: Vec<usize>,
    burst: bool,
    wakeup: bool,
    process: bool,
    trace: bool,
}

impl Args {
    fn parse(mut it: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut args = Args {
            redis: None,
            instances: vec![2, 4, 8],
            requests: vec![1_000, 10_000, 100_000],
            samples: 200,
            waiters: vec![1, 4],
            burst: true,
            wakeup: true,
            process: true,
            trace: false,
        };
        let list = |flag: &str, v: Option<String>| -> Result<Vec<usize>, String> {
            let v = v.ok_or(format!("{flag} needs a value"))?;
            v.split(',')
                .map(|n| n.replace('_', "").parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{flag}: {e}"))
                .and_then(|l| {
                    if l.is_empty() || l.contains(&0) {
                        Err(format!("{flag}: every value must be at least 1"))
                    } else {
                        Ok(l)
                    }
                })
        };
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--redis" => args.redis = Some(it.next().ok_or("--redis needs a URL")?),
                "--instances" => args.instances = list(&flag, it.next())?,
                "--requests" => args.requests = list(&flag, it.next())?,
                "--waiters" => args.waiters = list(&flag, it.next())?,
                "--samples" => args.samples = list(&flag, it.next())?[0],
                "--no-process" => args.process = false,
                "--trace" => args.trace = true,
                "--only" => match it.next().as_deref() {
                    Some("burst") => args.wakeup = false,
                    Some("wakeup") => args.burst = false,
                    _ => return Err("--only takes burst or wakeup".into()),
                },
                "-h" | "--help" => {
                    return Err(
                        "usage: distributed_bench [--redis URL] [--instances 2,4,8] \
                         [--requests 1000,10000,100000] [--samples 200] [--waiters 1,4] \
                         [--only burst|wakeup] [--no-process] [--trace]"
                            .into(),
                    )
                }
                other => return Err(format!("unknown option {other}; try --help")),
            }
        }
        if args.instances.contains(&1) {
            return Err("--instances: at least 2, or nothing is shared through Redis".into());
        }
        Ok(args)
    }
}

fn main() {
    let mut argv = std::env::args().skip(1).peekable();
    // The child-process variant re-executes this example as a waiting instance.
    if argv.peek().map(String::as_str) == Some(CHILD_FLAG) {
        let (url, namespace) = match (argv.nth(1), argv.next()) {
            (Some(url), Some(namespace)) => (url, namespace),
            _ => {
                eprintln!("{CHILD_FLAG} needs a URL and a namespace");
                std::process::exit(2)
            }
        };
        runtime().block_on(serve_waiting_instance(url, namespace));
        return;
    }
    let args = Args::parse(argv).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    // The server is stopped when `server` drops, so every way out of the run
    // below returns here rather than exiting the process.
    let server = match &args.redis {
        Some(_) => None,
        None => match RedisServer::try_start_with(&[]) {
            Ok(server) => Some(server),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1)
            }
        },
    };
    let url = args
        .redis
        .clone()
        .unwrap_or_else(|| server.as_ref().map(RedisServer::url).unwrap_or_default());
    let outcome = runtime().block_on(async {
        tokio::select! {
            outcome = run(&args, &url) => outcome,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
        }
    });
    drop(server);
    if let Err(e) = outcome {
        eprintln!("distributed_bench: {e}");
        std::process::exit(1);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

async fn run(args: &Args, url: &str) -> Result<(), String> {
    let mut probe = Probe::connect(url).await?;
    let machine = Machine::describe(&mut probe).await?;
    println!("# tower-coalesce across instances on one Redis\n");
    machine.print();
    println!("- Redis: `{url}`");
    println!("- load average at start: {}", load_average());
    println!(
        "- every instance: `CoalesceLayer` + its own `RedisBackend` (own connection), \
         `ttl` 60 s, default lease (10 s) and timeouts\n"
    );

    if args.burst {
        burst_table(args, url, &mut probe, &machine).await?;
    }
    if args.wakeup {
        wakeup_tables(args, url, &mut probe).await?;
    }
    println!("load average at the end: {}", load_average());
    Ok(())
}

// ---------------------------------------------------------------------------
// Part 1: Redis commands per burst.

struct Burst {
    instances: usize,
    requests: usize,
    origin_calls: usize,
    /// Calls per command from `INFO commandstats`, which counts the commands
    /// a Lua script runs as well as the script's own `EVALSHA`.
    commands: BTreeMap<String, u64>,
    /// The same burst as `MONITOR` saw it: who sent what, and when.
    log: Vec<Logged>,
    /// From opening the origin's gate to the last answer, over every instance.
    fan_out: Duration,
    /// From the first request sent to every request having joined a flight.
    gathered_in: Duration,
    outcomes: BTreeMap<String, usize>,
    wrong: usize,
    backend_errors: u64,
}

impl Burst {
    fn total(&self) -> u64 {
        self.commands.values().sum()
    }

    fn set_up(&self) -> u64 {
        SET_UP_COMMANDS
            .iter()
            .filter_map(|c| self.commands.get(*c))
            .sum()
    }

    /// Commands the instances sent (round trips), as `MONITOR` saw them.
    fn sent(&self) -> usize {
        self.log.iter().filter(|l| !l.in_script()).count()
    }

    fn in_scripts(&self) -> usize {
        self.log.iter().filter(|l| l.in_script()).count()
    }

    fn breakdown(&self) -> String {
        self.commands
            .iter()
            .map(|(name, calls)| format!("{} {calls}", name.to_uppercase()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn burst_table(
    args: &Args,
    url: &str,
    probe: &mut Probe,
    machine: &Machine,
) -> Result<(), String> {
    // Loads the Lua scripts into the server's cache (the first `EVALSHA` of a
    // script on a fresh server fails with NOSCRIPT and loads it), so that no
    // reported burst pays for that once-per-server step.
    burst(url, probe, 2, 10, "warm-up").await?;

    let mut rows = Vec::new();
    for &instances in &args.instances {
        for &requests in &args.requests {
            if requests < instances {
                continue;
            }
            eprintln!(
                "burst: {} requests over {instances} instances…",
                group(requests)
            );
            let cpu = CpuUse::now();
            let b = burst(url, probe, instances, requests, "burst").await?;
            rows.push((b, cpu.since()));
        }
    }
    println!("## Redis commands per cold burst\n");
    println!(
        "Command: `cargo run --release -p coalesce-bench --bin distributed_bench -- --only burst` \
         ({}, {}).\n",
        machine.short(),
        machine.date
    );
    println!(
        "One key; every request sent at once, round-robin over the instances; the origin \
         answers once all have joined (one flight per instance, one of them holding the \
         lease). \"Redis commands\" is the sum of `calls=` in `INFO commandstats` after \
         `CONFIG RESETSTAT`, less the benchmark's own; it includes each instance's \
         connection set-up (`HELLO`, `PING`, `SCRIPT LOAD`), and counts both a Lua script's `EVALSHA` and \
         the commands the script runs (the completion's `GET`, `SET`, `DEL`, `PUBLISH`). \
         \"Sent\" is what the instances sent, i.e. round trips, from `MONITOR` during the \
         same burst.\n"
    );
    println!(
        "| instances | requests | origin calls | Redis commands | per instance | per instance, no set-up | sent (round trips) | of which inside Lua | gate open → last answer | CPU busy / steal |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (b, cpu) in &rows {
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {} ({:.1} per instance) | {} | {} | {cpu} |",
            b.instances,
            group(b.requests),
            b.origin_calls,
            b.total(),
            b.total() as f64 / b.instances as f64,
            (b.total() - b.set_up()) as f64 / b.instances as f64,
            b.sent(),
            b.sent() as f64 / b.instances as f64,
            b.in_scripts(),
            ms(b.fan_out),
        );
    }
    println!();
    println!(
        "| instances | requests | commands (`INFO commandstats`) | all joined after | outcomes | wrong answers | backend errors |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (b, _) in &rows {
        let outcomes = b
            .outcomes
            .iter()
            .map(|(o, n)| format!("{o} {}", group(*n)))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "| {} | {} | {} | {} | {outcomes} | {} | {} |",
            b.instances,
            group(b.requests),
            b.breakdown(),
            ms(b.gathered_in),
            b.wrong,
            b.backend_errors
        );
    }
    println!();
    let worst = rows
        .iter()
        .map(|(b, _)| b.total() as f64 / b.instances as f64)
        .fold(0.0, f64::max);
    println!(
        "Target ≤ 20 commands per instance whatever the burst size: {} (worst {worst:.1}).\n",
        if worst <= 20.0 { "met" } else { "MISSED" }
    );
    if let Some((b, _)) = rows.first() {
        println!(
            "The command sequence of the first burst ({} requests over {} instances), from `MONITOR` \
             (connections numbered in order of appearance; `lua` = run by the script; keys \
             shortened to their suffix):\n",
            group(b.requests),
            b.instances
        );
        println!("```text");
        print_sequence(&b.log);
        println!("```\n");
    }
    Ok(())
}

async fn burst(
    url: &str,
    probe: &mut Probe,
    instances: usize,
    requests: usize,
    label: &str,
) -> Result<Burst, String> {
    let namespace = fresh_namespace(label);
    let path = "/products/7";
    let origin = Origin::gated();
    // Started before the reset, so that the `MONITOR` command is not counted.
    let log = CommandLog::start(url).await?;
    probe.reset_stats().await?;
    let mut layers = Vec::new();
    let mut namer = None;
    for _ in 0..instances {
        let (layer, backend) = instance(url, &namespace).await?;
        namer.get_or_insert(backend);
        layers.push(layer);
    }
    let channel = namer
        .expect("at least one instance")
        .done_channel(&key(path));
    let services: Vec<_> = layers.iter().map(|l| l.layer(origin.service())).collect();

    let start = Instant::now();
    let mut tasks = Vec::with_capacity(requests);
    for i in 0..requests {
        let svc = services[i % instances].clone();
        tasks.push(tokio::spawn(ask(svc, path)));
    }
    // Every request has joined: one flight per instance (its local leader),
    // all but one of those waiting on Redis, and the one origin call begun.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let followers: u64 = layers.iter().map(|l| l.stats().followers).sum();
        let waiting: u64 = layers.iter().map(|l| l.stats().remote_waits).sum();
        if followers == (requests - instances) as u64
            && waiting == (instances - 1) as u64
            && origin.calls() >= 1
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{label}: the burst never gathered ({followers} followers, {waiting} remote waits, {} origin calls)",
                origin.calls()
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let gathered_in = start.elapsed();
    let opened = Instant::now();
    origin.open();

    let mut outcomes = BTreeMap::new();
    let mut wrong = 0;
    let mut last = opened;
    for task in tasks {
        let answer = task
            .await
            .map_err(|e| format!("a request task failed: {e}"))?;
        *outcomes
            .entry(answer.outcome.map_or("none", Outcome::as_str).to_owned())
            .or_insert(0) += 1;
        wrong += usize::from(!answer.ok);
        last = last.max(answer.at);
    }
    // Each instance unsubscribes from the done channel in a task of its own
    // once its wait is over; count those commands too.
    probe.until_subscribers(&channel, 0).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let commands = probe.command_counts().await?;
    let log = log.finish(probe, &namespace).await?;

    for layer in &layers {
        if layer.flights_in_progress() != 0 {
            return Err(format!("{label}: a flight was left in the table"));
        }
    }
    Ok(Burst {
        instances,
        requests,
        origin_calls: origin.calls(),
        commands,
        log,
        fan_out: last.duration_since(opened),
        gathered_in,
        outcomes,
        wrong,
        backend_errors: layers.iter().map(|l| l.stats().backend_errors).sum(),
    })
}

/// One line per command: time from the first, connection, command, arguments.
fn print_sequence(log: &[Logged]) {
    let mut connections: Vec<&str> = Vec::new();
    let first = log.first().map_or(0, |l| l.at_us);
    for line in log {
        let who = if line.in_script() {
            "lua".to_owned()
        } else {
            let n = match connections.iter().position(|c| *c == line.source) {
                Some(n) => n,
                None => {
                    connections.push(&line.source);
                    connections.len() - 1
                }
            };
            format!("conn {}", n + 1)
        };
        println!(
            "{:>9.3} ms  {who:<7}  {}",
            (line.at_us - first) as f64 / 1e3,
            line.short()
        );
    }
}

// ---------------------------------------------------------------------------
// Part 2: cross-instance wake-up.

/// One sample: how long after the origin returned each waiting instance's
/// caller had its response, and the leading instance's own caller.
struct Sample {
    path: String,
    /// When the origin returned, on the wall clock (ns since the epoch).
    returned_ns: u128,
    leader: Duration,
    waiters: Vec<Duration>,
    /// When each waiting instance's caller had its response, on the wall clock.
    waiters_ns: Vec<u128>,
}

struct Series {
    setup: &'static str,
    waiters: usize,
    samples: Vec<Sample>,
    /// Plain pub/sub hops timed in the same stretch of time, one per sample.
    baseline: Vec<Duration>,
    cpu: String,
    /// With `--trace`: where the time went, from `MONITOR`.
    steps: Option<Steps>,
}

/// Warm-up samples per series, not reported: connections opened, scripts
/// cached, code paths warm.
const WARM_UP: usize = 10;
/// After every waiting instance is subscribed, a pause so that each one's
/// lookup and lease attempt that follow the `SUBSCRIBE` are answered and it
/// is parked on the done message, as a long wait would be.
const SETTLE: Duration = Duration::from_millis(5);

const IN_PROCESS: &str = "one process, separate connections";
const CHILDREN: &str = "waiting instances in child processes";

async fn wakeup_tables(args: &Args, url: &str, probe: &mut Probe) -> Result<(), String> {
    let mut setups = vec![IN_PROCESS];
    if args.process {
        setups.push(CHILDREN);
    }
    let mut baseline = Baseline::connect(url).await?;
    let mut series = Vec::new();
    for traced in [false, true] {
        if traced && !args.trace {
            continue;
        }
        for &setup in &setups {
            for &w in &args.waiters {
                eprintln!(
                    "wake-up, {setup}{}: {w} waiting instance(s), {} samples…",
                    if traced { ", traced" } else { "" },
                    args.samples
                );
                let log = if traced {
                    Some(CommandLog::start(url).await?)
                } else {
                    None
                };
                let namespace = fresh_namespace("wake");
                let cpu = CpuUse::now();
                baseline.taken.clear();
                let samples = match setup {
                    IN_PROCESS => {
                        wakeup_in_process(url, probe, &mut baseline, &namespace, w, args.samples)
                            .await
                    }
                    _ => {
                        let b = &mut baseline;
                        wakeup_across_processes(url, probe, b, &namespace, w, args.samples).await
                    }
                }?;
                let cpu = cpu.since();
                let steps = match log {
                    Some(log) => Some(Steps::of(
                        &samples,
                        &log.finish(probe, &namespace).await?,
                        &namer(url, &namespace).await?,
                    )),
                    None => None,
                };
                series.push(Series {
                    setup,
                    waiters: w,
                    samples,
                    baseline: std::mem::take(&mut baseline.taken),
                    cpu,
                    steps,
                });
            }
        }
    }

    println!("## Cross-instance wake-up\n");
    println!("Command: `cargo run --release -p coalesce-bench --bin distributed_bench -- --only wakeup`.\n");
    println!(
        "Instance A leads (its origin held by a gate); each waiting instance has one request \
         waiting on A's flight through Redis (subscribed, parked on the done message). \
         Measured: from A's origin returning (an instant taken inside the origin future) to \
         the waiting instance's caller having its response. A fresh key per sample; \
         {WARM_UP} unreported warm-up samples per series. In one process every instance still \
         has its own `RedisBackend` and connection; in the child-process variant each waiting \
         instance is a separate OS process (this example re-executed) and the times are \
         wall-clock timestamps compared across the processes. After each sample, a baseline \
         without the layer is timed: a plain redis-rs `PUBLISH` on one connection to a \
         subscriber task on another, in the benchmark's process: one network hop and one \
         task wake-up, what the machine allowed at that moment.\n"
    );
    println!(
        "| setup | waiting instances | measured | samples | p50 | p90 | p99 | max | CPU busy / steal |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut worst_p99 = Duration::ZERO;
    for s in series.iter().filter(|s| s.steps.is_none()) {
        let (setup, w) = (s.setup, s.waiters);
        let each: Vec<Duration> = s.samples.iter().flat_map(|s| s.waiters.clone()).collect();
        let p = Percentiles::of(each);
        worst_p99 = worst_p99.max(p.p99);
        println!(
            "| {setup} | {w} | each waiting instance answered | {} | {} | {} |",
            p.n,
            p.cells(),
            s.cpu
        );
        if w > 1 {
            let last = s
                .samples
                .iter()
                .filter_map(|s| s.waiters.iter().max().copied())
                .collect();
            let p = Percentiles::of(last);
            println!(
                "| {setup} | {w} | last of the {w} answered | {} | {} | |",
                p.n,
                p.cells()
            );
        }
        let p = Percentiles::of(s.samples.iter().map(|s| s.leader).collect());
        println!(
            "| {setup} | {w} | (A's own caller answered) | {} | {} | |",
            p.n,
            p.cells()
        );
        let p = Percentiles::of(s.baseline.clone());
        println!(
            "| {setup} | {w} | (baseline, no layer: plain `PUBLISH` → subscriber task, one after each sample) | {} | {} | |",
            p.n,
            p.cells()
        );
    }
    println!();
    println!(
        "Target: a waiting instance answered within 5 ms at p99: {} (worst p99 {}).\n",
        if worst_p99 <= Duration::from_millis(5) {
            "met"
        } else {
            "MISSED"
        },
        ms(worst_p99)
    );
    let traced: Vec<&Series> = series.iter().filter(|s| s.steps.is_some()).collect();
    if !traced.is_empty() {
        print_steps(&traced);
    }
    Ok(())
}

/// The floor the machine allows at the moment: one connection publishes,
/// another one's subscriber task receives, with no layer involved. Timed from
/// just before the `PUBLISH` is sent to the subscriber task having the
/// message. One is taken after each wake-up sample, so that both see the same
/// machine.
struct Baseline {
    channel: String,
    publisher: MultiplexedConnection,
    received: mpsc::UnboundedReceiver<Instant>,
    listener: tokio::task::JoinHandle<()>,
    taken: Vec<Duration>,
}

impl Baseline {
    async fn connect(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
        let channel = fresh_namespace("baseline");
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .map_err(|e| format!("pub/sub connection: {e}"))?;
        pubsub
            .subscribe(&channel)
            .await
            .map_err(|e| format!("SUBSCRIBE: {e}"))?;
        let publisher = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("cannot reach Redis at {url}: {e}"))?;
        let (tx, received) = mpsc::unbounded_channel();
        let listener = tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while messages.next().await.is_some() {
                if tx.send(Instant::now()).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            channel,
            publisher,
            received,
            listener,
            taken: Vec::new(),
        })
    }

    /// Times one hop; kept unless `warm_up`.
    async fn take(&mut self, warm_up: bool) -> Result<(), String> {
        let sent = Instant::now();
        redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg("stored")
            .query_async::<i64>(&mut self.publisher)
            .await
            .map_err(|e| format!("PUBLISH: {e}"))?;
        let received = tokio::time::timeout(Duration::from_secs(10), self.received.recv())
            .await
            .ok()
            .flatten()
            .ok_or("the baseline subscriber got no message")?;
        if !warm_up {
            self.taken.push(received.saturating_duration_since(sent));
        }
        Ok(())
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// A backend that only names keys: it never connects (connections are lazy).
async fn namer(url: &str, namespace: &str) -> Result<RedisBackend, String> {
    RedisBackend::builder(url)
        .namespace(namespace)
        .connect()
        .await
        .map_err(|e| e.to_string())
}

async fn wakeup_in_process(
    url: &str,
    probe: &mut Probe,
    baseline: &mut Baseline,
    namespace: &str,
    waiters: usize,
    samples: usize,
) -> Result<Vec<Sample>, String> {
    let (leader, namer) = instance(url, namespace).await?;
    let mut waiting = Vec::new();
    for _ in 0..waiters {
        waiting.push(instance(url, namespace).await?.0);
    }
    let mut out = Vec::new();
    for i in 0..WARM_UP + samples {
        let path = format!("/wake/{waiters}/{i}");
        let origin = Origin::gated();
        let lead = tokio::spawn(ask(leader.layer(origin.service()), path.clone()));
        wait_for(|| origin.calls() == 1, "the leader's origin call").await?;
        let mut asked = Vec::new();
        for layer in &waiting {
            let before = layer.stats().remote_waits;
            asked.push(tokio::spawn(ask(
                layer.layer(origin.service()),
                path.clone(),
            )));
            wait_for(|| layer.stats().remote_waits > before, "a remote wait").await?;
        }
        probe
            .until_subscribers(&namer.done_channel(&key(&path)), waiters)
            .await?;
        tokio::time::sleep(SETTLE).await;
        origin.open();

        let lead = lead.await.map_err(|e| e.to_string())?;
        let (returned, returned_ns) = origin.returned().ok_or("the origin never returned")?;
        let mut sample = Sample {
            path: path.clone(),
            returned_ns,
            leader: lead.at.saturating_duration_since(returned),
            waiters: Vec::new(),
            waiters_ns: Vec::new(),
        };
        for task in asked {
            let answer = task.await.map_err(|e| e.to_string())?;
            if !answer.ok || answer.outcome != Some(Outcome::Follower) {
                return Err(format!(
                    "{path}: a waiting instance got {:?}, ok {}",
                    answer.outcome, answer.ok
                ));
            }
            sample
                .waiters
                .push(answer.at.saturating_duration_since(returned));
            sample.waiters_ns.push(answer.wall_ns);
        }
        if origin.calls() != 1 {
            return Err(format!("{path}: {} origin calls", origin.calls()));
        }
        tokio::time::sleep(SETTLE).await;
        baseline.take(i < WARM_UP).await?;
        if i >= WARM_UP {
            out.push(sample);
        }
    }
    let errors: u64 = std::iter::once(&leader)
        .chain(&waiting)
        .map(|l| l.stats().backend_errors + l.stats().takeovers)
        .sum();
    if errors > 0 {
        return Err(format!("{errors} backend errors or takeovers"));
    }
    Ok(out)
}

/// The flag with which this example runs as a waiting instance in a child
/// process.
const CHILD_FLAG: &str = "--serve-waiting-instance";

/// A waiting instance in a process of its own. On stdin: `wait <path>` lines.
/// On stdout: `ready` once, `waiting <path>` when the request waits on another
/// instance through Redis, and `answered <path> <unix-ns> <outcome> <ok>` when
/// its caller has the response.
async fn serve_waiting_instance(url: String, namespace: String) {
    let (layer, _) = match instance(&url, &namespace).await {
        Ok(instance) => instance,
        Err(e) => {
            eprintln!("waiting instance: {e}");
            std::process::exit(1)
        }
    };
    // This instance should never lead; if it does, its own origin answers
    // and the parent sees the outcome `leader`.
    let origin = Origin::gated();
    origin.open();
    println!("ready");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some(path) = line.strip_prefix("wait ") else {
            continue;
        };
        let path = path.to_owned();
        let before = layer.stats().remote_waits;
        let svc = layer.layer(origin.service());
        let p = path.clone();
        tokio::spawn(async move {
            let answer = ask(svc, p.clone()).await;
            println!(
                "answered {p} {} {} {}",
                answer.wall_ns,
                answer.outcome.map_or("none", Outcome::as_str),
                answer.ok
            );
        });
        if wait_for(|| layer.stats().remote_waits > before, "a remote wait")
            .await
            .is_ok()
        {
            println!("waiting {path}");
        }
    }
}

async fn wakeup_across_processes(
    url: &str,
    probe: &mut Probe,
    baseline: &mut Baseline,
    namespace: &str,
    waiters: usize,
    samples: usize,
) -> Result<Vec<Sample>, String> {
    let (leader, namer) = instance(url, namespace).await?;
    let exe = std::env::current_exe().map_err(|e| format!("this example's path: {e}"))?;
    let (events_tx, mut events) = mpsc::unbounded_channel::<(usize, String)>();
    let mut children = Vec::new();
    for id in 0..waiters {
        let mut child = tokio::process::Command::new(&exe)
            .args([CHILD_FLAG, url, namespace])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting a waiting instance: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take().expect("piped stdin");
        let tx = events_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send((id, line)).is_err() {
                    break;
                }
            }
        });
        children.push((child, stdin));
    }
    drop(events_tx);
    for _ in 0..waiters {
        let (_, line) = next(&mut events, "ready").await?;
        if line != "ready" {
            return Err(format!("a waiting instance said {line:?}"));
        }
    }

    let mut out = Vec::new();
    for i in 0..WARM_UP + samples {
        let path = format!("/wake-proc/{waiters}/{i}");
        let origin = Origin::gated();
        let lead = tokio::spawn(ask(leader.layer(origin.service()), path.clone()));
        wait_for(|| origin.calls() == 1, "the leader's origin call").await?;
        for (_, stdin) in &mut children {
            stdin
                .write_all(format!("wait {path}\n").as_bytes())
                .await
                .map_err(|e| format!("writing to a waiting instance: {e}"))?;
            stdin.flush().await.map_err(|e| e.to_string())?;
        }
        let mut answered = vec![None; waiters];
        let mut ready = 0;
        while ready < waiters {
            let (id, line) = next(&mut events, "waiting").await?;
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["waiting", p] if p == path => ready += 1,
                ["answered", p, ..] if p == path => answered[id] = Some(line.clone()),
                _ => return Err(format!("unexpected line from a waiting instance: {line:?}")),
            }
        }
        probe
            .until_subscribers(&namer.done_channel(&key(&path)), waiters)
            .await?;
        tokio::time::sleep(SETTLE).await;
        origin.open();

        let lead = lead.await.map_err(|e| e.to_string())?;
        let (returned, returned_ns) = origin.returned().ok_or("the origin never returned")?;
        while answered.iter().any(Option::is_none) {
            let (id, line) = next(&mut events, "answered").await?;
            answered[id] = Some(line);
        }
        let mut sample = Sample {
            path: path.clone(),
            returned_ns,
            leader: lead.at.saturating_duration_since(returned),
            waiters: Vec::new(),
            waiters_ns: Vec::new(),
        };
        for line in answered.into_iter().flatten() {
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["answered", p, ns, "follower", "true"] if p == path => {
                    let ns: u128 = ns.parse().map_err(|e| format!("{line:?}: {e}"))?;
                    sample.waiters.push(nanos_between(returned_ns, ns));
                    sample.waiters_ns.push(ns);
                }
                _ => return Err(format!("a waiting instance answered {line:?}")),
            }
        }
        if origin.calls() != 1 {
            return Err(format!("{path}: {} origin calls", origin.calls()));
        }
        tokio::time::sleep(SETTLE).await;
        baseline.take(i < WARM_UP).await?;
        if i >= WARM_UP {
            out.push(sample);
        }
    }
    for (mut child, stdin) in children {
        // End of input ends the child; it is killed if it does not.
        drop(stdin);
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }
    Ok(out)
}

/// The next line from any waiting instance, as `(instance, line)`.
async fn next(
    events: &mut mpsc::UnboundedReceiver<(usize, String)>,
    what: &str,
) -> Result<(usize, String), String> {
    match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err(format!("the waiting instances exited before {what}")),
        Err(_) => Err(format!("no {what} from a waiting instance within 10 s")),
    }
}

// ---------------------------------------------------------------------------
// Instances, requests and the origin.

async fn instance(url: &str, namespace: &str) -> Result<(CoalesceLayer, RedisBackend), String> {
    let backend = RedisBackend::builder(url)
        .namespace(namespace)
        .connect()
        .await
        .map_err(|e| format!("cannot use Redis at {url}: {e}"))?;
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .backend(backend.clone()),
    );
    Ok((layer, backend))
}

/// A namespace no earlier burst used, so that nothing stored answers it.
fn fresh_namespace(label: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "bench-{}-{}-{label}-{}",
        std::process::id(),
        unix_nanos() / 1_000_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn key(path: &str) -> tower_coalesce::Key {
    HttpKey::new()
        .extract(&request(path))
        .expect("a GET is keyed")
}

fn request(path: &str) -> Req {
    Request::get(path)
        .body(Empty::new())
        .expect("a valid request")
}

/// What a caller got, and when.
struct Answer {
    outcome: Option<Outcome>,
    /// A 200 whose body is the request's path.
    ok: bool,
    at: Instant,
    wall_ns: u128,
}

async fn ask<S, B>(svc: S, path: impl Into<String>) -> Answer
where
    S: tower::Service<Req, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes>,
{
    let path = path.into();
    let res = match svc.oneshot(request(&path)).await {
        Ok(res) => res,
        Err(never) => match never {},
    };
    // The caller has its response now: the time is taken before the body is
    // read, which for a coalesced answer is already in memory.
    let (at, wall_ns) = (Instant::now(), unix_nanos());
    let outcome = res.extensions().get::<Outcome>().copied();
    let status = res.status();
    let body = res.into_body().collect().await.ok().map(|b| b.to_bytes());
    Answer {
        outcome,
        ok: status == StatusCode::OK && body.as_deref() == Some(path.as_bytes()),
        at,
        wall_ns,
    }
}

/// The "database": counts its calls, holds its answers until its gate opens,
/// and notes when it returned, on this process's clock and on the wall clock
/// (which another process on the machine shares).
struct Origin {
    calls: AtomicUsize,
    gate: Semaphore,
    returned: Mutex<Option<(Instant, u128)>>,
}

impl Origin {
    fn gated() -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            gate: Semaphore::new(0),
            returned: Mutex::new(None),
        })
    }

    /// Lets every call through, now and later. Called once per origin.
    fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn returned(&self) -> Option<(Instant, u128)> {
        *self.returned.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn service(
        self: &Arc<Self>,
    ) -> impl tower::Service<
        Req,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
    > + Clone
           + Send
           + 'static {
        let me = self.clone();
        tower::service_fn(move |req: Req| {
            let me = me.clone();
            async move {
                me.calls.fetch_add(1, Ordering::SeqCst);
                let _permit = me.gate.acquire().await.expect("the gate is never closed");
                let res = Response::new(Full::new(Bytes::from(req.uri().path().to_owned())));
                // The last thing before returning: the wake-up is measured from here.
                *me.returned.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), unix_nanos()));
                Ok(res)
            }
        })
    }
}

/// Waits (bounded, 10 s) until `cond` holds.
async fn wait_for(cond: impl Fn() -> bool, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Tracing with MONITOR: which command ran when, on which connection.

/// Every command Redis runs while it is on, from a `MONITOR` connection.
struct CommandLog {
    lines: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CommandLog {
    async fn start(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
        let monitor = client
            .get_async_monitor()
            .await
            .map_err(|e| format!("MONITOR: {e}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let task = tokio::spawn(async move {
            // As raw values: a line that failed to convert would end the stream.
            let mut stream = monitor.into_on_message::<redis::Value>();
            while let Some(value) = stream.next().await {
                let line = match value {
                    redis::Value::SimpleString(s) => s,
                    redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                    _ => continue,
                };
                lock(&sink).push(line);
            }
        });
        Ok(Self { lines, task })
    }

    /// The commands logged so far, less the benchmark's own, and stops. A
    /// marker sent last tells when every earlier command has been logged.
    async fn finish(self, probe: &mut Probe, namespace: &str) -> Result<Vec<Logged>, String> {
        let marker = format!("end-of-log-{}", unix_nanos());
        probe.echo(&marker).await?;
        let logged = |lines: &Arc<Mutex<Vec<String>>>| {
            lock(lines)
                .iter()
                .rev()
                .take(64)
                .any(|l| l.contains(&marker))
        };
        let result = wait_for(|| logged(&self.lines), "the end of the MONITOR log").await;
        self.task.abort();
        result?;
        let lines = std::mem::take(&mut *lock(&self.lines));
        Ok(lines
            .iter()
            .take_while(|l| !l.contains(&marker))
            .filter_map(|l| Logged::parse(l, namespace))
            .filter(|l| !l.is_own())
            .collect())
    }
}

/// One line of `MONITOR`: `<unix s.µs> [<db> <client address | lua>] "CMD" "arg"…`.
struct Logged {
    at_us: u128,
    source: String,
    args: Vec<String>,
    namespace: String,
}

impl Logged {
    fn parse(line: &str, namespace: &str) -> Option<Self> {
        let (time, rest) = line.split_once(' ')?;
        let (secs, frac) = time.split_once('.')?;
        let micros = format!("{frac:0<6}");
        let at_us = secs.parse::<u128>().ok()? * 1_000_000 + micros[..6].parse::<u128>().ok()?;
        let (client, command) = rest.strip_prefix('[')?.split_once("] ")?;
        let source = client.split_once(' ')?.1.to_owned();
        Some(Self {
            at_us,
            source,
            args: quoted(command),
            namespace: namespace.to_owned(),
        })
    }

    fn name(&self) -> String {
        self.args
            .first()
            .map_or(String::new(), |n| n.to_uppercase())
    }

    fn in_script(&self) -> bool {
        self.source == "lua"
    }

    /// Sent by the benchmark itself, not by an instance.
    fn is_own(&self) -> bool {
        matches!(
            self.name().as_str(),
            "PUBSUB" | "ECHO" | "CONFIG" | "INFO" | "MONITOR"
        )
    }

    /// The command with its keys shortened to their suffix and long values cut.
    fn short(&self) -> String {
        let mut out = self.name();
        for arg in self.args.iter().skip(1) {
            out.push(' ');
            match arg.strip_prefix(&self.namespace) {
                Some(rest) => {
                    out.push_str("ns:{…}");
                    out.push_str(rest.rsplit_once('}').map_or(rest, |(_, s)| s));
                }
                None if arg.chars().count() > 16 => {
                    out.extend(arg.chars().take(8));
                    out.push('…');
                }
                None => out.push_str(arg),
            }
        }
        out
    }
}

/// The double-quoted arguments of a `MONITOR` line, escapes kept as they are.
fn quoted(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    let mut escaped = false;
    for c in s.chars() {
        match current.take() {
            None => {
                if c == '"' {
                    current = Some(String::new());
                }
            }
            Some(mut arg) => {
                if escaped {
                    arg.push(c);
                    escaped = false;
                    current = Some(arg);
                } else if c == '\\' {
                    arg.push(c);
                    escaped = true;
                    current = Some(arg);
                } else if c == '"' {
                    out.push(arg);
                } else {
                    arg.push(c);
                    current = Some(arg);
                }
            }
        }
    }
    out
}

/// Where the wake-up time went, from the Redis side: `MONITOR` stamps each
/// command when Redis runs it, on the wall clock the instances also read.
struct Steps {
    /// A's origin returned → Redis ran A's completion script (its `PUBLISH`).
    to_publish: Vec<Duration>,
    /// The done message published → a waiting instance's caller had its
    /// response.
    to_answer: Vec<Duration>,
    /// For waiting instances that looked the answer up after the message
    /// (rather than taking it from the message): message → Redis ran the
    /// lookup, and lookup → answered.
    to_lookup: Vec<Duration>,
    lookup_to_answer: Vec<Duration>,
    /// The slowest samples: total, then the steps of its slowest waiter.
    slowest: Vec<Slow>,
    /// Samples whose completion was not found in the log.
    unmatched: usize,
}

#[derive(Clone, Copy)]
struct Slow {
    total: Duration,
    to_publish: Duration,
    to_answer: Duration,
    lookup: Option<(Duration, Duration)>,
}

impl Steps {
    fn of(samples: &[Sample], log: &[Logged], namer: &RedisBackend) -> Self {
        let mut steps = Steps {
            to_publish: Vec::new(),
            to_answer: Vec::new(),
            to_lookup: Vec::new(),
            lookup_to_answer: Vec::new(),
            slowest: Vec::new(),
            unmatched: 0,
        };
        let mut per_sample = Vec::new();
        for sample in samples {
            let key = key(&sample.path);
            let (channel, value_key) = (namer.done_channel(&key), namer.value_key(&key));
            let Some(published) = log.iter().position(|l| {
                l.in_script() && l.name() == "PUBLISH" && l.args.get(1) == Some(&channel)
            }) else {
                steps.unmatched += 1;
                continue;
            };
            // The completion is the command whose script published the done
            // message: the last one an instance sent before that `PUBLISH`.
            let Some(leader) = log[..published].iter().rev().find(|l| !l.in_script()) else {
                steps.unmatched += 1;
                continue;
            };
            let published_ns = log[published].at_us * 1_000;
            // Each waiting instance's first command on the answer's key after
            // the message, if any: its lookup.
            let mut first_by_source: BTreeMap<&str, u128> = BTreeMap::new();
            for l in &log[published..] {
                if !l.in_script() && l.source != leader.source && l.args.contains(&value_key) {
                    first_by_source.entry(&l.source).or_insert(l.at_us * 1_000);
                }
            }
            let mut lookups: Vec<u128> = first_by_source.into_values().collect();
            lookups.sort_unstable();
            let mut answers = sample.waiters_ns.clone();
            answers.sort_unstable();
            let to_publish = nanos_between(sample.returned_ns, published_ns);
            steps.to_publish.push(to_publish);
            let mut worst: Option<Slow> = None;
            for (i, answer) in answers.iter().enumerate() {
                let to_answer = nanos_between(published_ns, *answer);
                steps.to_answer.push(to_answer);
                // With as many lookups as waiters, the n-th lookup is paired
                // with the n-th answer.
                let lookup = (lookups.len() == answers.len()).then(|| {
                    (
                        nanos_between(published_ns, lookups[i]),
                        nanos_between(lookups[i], *answer),
                    )
                });
                if let Some((a, b)) = lookup {
                    steps.to_lookup.push(a);
                    steps.lookup_to_answer.push(b);
                }
                let total = nanos_between(sample.returned_ns, *answer);
                if worst.is_none_or(|w| total > w.total) {
                    worst = Some(Slow {
                        total,
                        to_publish,
                        to_answer,
                        lookup,
                    });
                }
            }
            per_sample.extend(worst);
        }
        per_sample.sort_unstable_by_key(|s| std::cmp::Reverse(s.total));
        per_sample.truncate(5);
        steps.slowest = per_sample;
        steps
    }
}

fn print_steps(series: &[&Series]) {
    println!("### Where the wake-up time goes (`--trace`)\n");
    println!(
        "Separate runs with a `MONITOR` connection open (it adds a little work to Redis for \
         every command, so these totals are not the figures above). Redis stamps each command \
         when it runs it, in wall-clock microseconds, which the instances' timestamps can be \
         compared with. A waiting instance's lookup is its first command on the answer's key \
         after the done message (none if it took the answer from the message). With several \
         waiting instances, lookups and answers are paired in time order.\n"
    );
    println!("| setup | waiting instances | step | n | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|---|---|");
    for s in series {
        let Some(steps) = &s.steps else { continue };
        let rows = [
            (
                "1. A's origin returns → Redis runs A's completion script (`PUBLISH` of the done message)",
                &steps.to_publish,
            ),
            (
                "2. done message published → the waiting instance's caller has its response",
                &steps.to_answer,
            ),
            (
                "2a. of which: message → Redis runs the waiting instance's lookup (delivered, woken, sent)",
                &steps.to_lookup,
            ),
            (
                "2b. of which: lookup → the waiting instance's caller has its response",
                &steps.lookup_to_answer,
            ),
        ];
        for (step, values) in rows {
            if values.is_empty() {
                continue;
            }
            let p = Percentiles::of(values.clone());
            println!(
                "| {} | {} | {step} | {} | {} |",
                s.setup,
                s.waiters,
                p.n,
                p.cells()
            );
        }
        let total = Percentiles::of(s.samples.iter().flat_map(|x| x.waiters.clone()).collect());
        println!(
            "| {} | {} | total: origin return → answered (CPU busy / steal {}) | {} | {} |",
            s.setup,
            s.waiters,
            s.cpu,
            total.n,
            total.cells()
        );
        if steps.unmatched > 0 {
            println!(
                "| {} | {} | samples not found in the log | {} | | | | |",
                s.setup, s.waiters, steps.unmatched
            );
        }
    }
    println!();
    println!(
        "The five slowest samples of each traced series (total = origin return → the slowest \
         waiting instance answered; the steps are that instance's):\n"
    );
    println!(
        "| setup | waiting instances | total | 1. → published | 2. → answered | 2a. → lookup run | 2b. → answered |"
    );
    println!("|---|---|---|---|---|---|---|");
    for s in series {
        let Some(steps) = &s.steps else { continue };
        for slow in &steps.slowest {
            let (a, b) = match slow.lookup {
                Some((a, b)) => (ms(a), ms(b)),
                None => ("—".to_owned(), "—".to_owned()),
            };
            println!(
                "| {} | {} | {} | {} | {} | {a} | {b} |",
                s.setup,
                s.waiters,
                ms(slow.total),
                ms(slow.to_publish),
                ms(slow.to_answer),
            );
        }
    }
    println!();
}

/// How busy the machine's CPUs were over a stretch of time, and how much
/// time the hypervisor gave to other guests (steal), from `/proc/stat`.
struct CpuUse {
    start: Option<Vec<u64>>,
}

impl CpuUse {
    fn now() -> Self {
        Self {
            start: Self::read(),
        }
    }

    fn read() -> Option<Vec<u64>> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        line.split_whitespace()
            .take(8)
            .map(|f| f.parse().ok())
            .collect()
    }

    /// `busy % / steal %` since `now`.
    fn since(&self) -> String {
        let (Some(start), Some(end)) = (&self.start, Self::read()) else {
            return "unknown".to_owned();
        };
        let d: Vec<u64> = end.iter().zip(start).map(|(e, s)| e - s).collect();
        let total: u64 = d.iter().sum();
        if total == 0 || d.len() < 8 {
            return "unknown".to_owned();
        }
        // user nice system idle iowait irq softirq steal
        let busy = total - d[3] - d[4];
        format!(
            "{:.0} % / {:.1} %",
            100.0 * busy as f64 / total as f64,
            100.0 * d[7] as f64 / total as f64
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `to - from` in wall-clock nanoseconds, zero if negative (clock resolution).
fn nanos_between(from: u128, to: u128) -> Duration {
    Duration::from_nanos(u64::try_from(to.saturating_sub(from)).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------
// Redis: the server, and the benchmark's own connection to it.

/// The benchmark's own connection: opened once, before any counting, so that
/// its set-up is never counted.
struct Probe {
    conn: MultiplexedConnection,
}

impl Probe {
    async fn connect(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("cannot reach Redis at {url}: {e}"))?;
        Ok(Self { conn })
    }

    async fn reset_stats(&mut self) -> Result<(), String> {
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async::<()>(&mut self.conn)
            .await
            .map_err(|e| format!("CONFIG RESETSTAT: {e}"))
    }

    /// Calls per command since the last reset, less the benchmark's own.
    async fn command_counts(&mut self) -> Result<BTreeMap<String, u64>, String> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.conn)
            .await
            .map_err(|e| format!("INFO commandstats: {e}"))?;
        Ok(coalesce_bench::report::command_calls(&info)
            .filter(|(name, _)| !OWN_COMMANDS.contains(name))
            .map(|(name, calls)| (name.to_owned(), calls))
            .collect())
    }

    async fn subscribers(&mut self, channel: &str) -> Result<usize, String> {
        let (_, n): (String, usize) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut self.conn)
            .await
            .map_err(|e| format!("PUBSUB NUMSUB: {e}"))?;
        Ok(n)
    }

    /// Waits (bounded, 10 s) until `channel` has `n` subscribers.
    async fn until_subscribers(&mut self, channel: &str, n: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.subscribers(channel).await?;
            if now == n {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{channel}: {now} subscribers, expected {n}"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn echo(&mut self, text: &str) -> Result<(), String> {
        redis::cmd("ECHO")
            .arg(text)
            .query_async::<String>(&mut self.conn)
            .await
            .map(drop)
            .map_err(|e| format!("ECHO: {e}"))
    }

    async fn server_version(&mut self) -> Result<String, String> {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.conn)
            .await
            .map_err(|e| format!("INFO server: {e}"))?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned())
    }
}

// ---------------------------------------------------------------------------
// The machine, and formatting.

struct Machine {
    cpus: usize,
    cpu_model: String,
    kernel: String,
    redis: String,
    date: String,
}

impl Machine {
    async fn describe(probe: &mut Probe) -> Result<Self, String> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Ok(Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map_or("unknown".to_owned(), |(_, m)| m.trim().to_owned()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or("unknown".to_owned(), |k| k.trim().to_owned()),
            redis: probe.server_version().await?,
            date: today(),
        })
    }

    fn print(&self) {
        println!("- machine: {} CPUs (nproc), {}", self.cpus, self.cpu_model);
        println!("- kernel: Linux {}", self.kernel);
        println!("- redis-server: {} (loopback)", self.redis);
        println!("- date: {} (UTC)", self.date);
    }

    fn short(&self) -> String {
        format!(
            "{}-core {}, Linux {}, Redis {}",
            self.cpus, self.cpu_model, self.kernel, self.redis
        )
    }
}

struct Percentiles {
    n: usize,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

impl Percentiles {
    /// Nearest-rank percentiles.
    fn of(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        let rank = |q: f64| {
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
            v.get(i - 1).copied().unwrap_or_default()
        };
        Self {
            n: v.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: v.last().copied().unwrap_or_default(),
        }
    }

    fn cells(&self) -> String {
        format!(
            "{} | {} | {} | {}",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max)
        )
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Today's date (UTC) as `YYYY-MM-DD`, from the days since 1970-01-01.
fn today() -> String {
    let days = (unix_nanos() / 86_400_000_000_000) as i64;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

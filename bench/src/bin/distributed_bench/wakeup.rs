//! Scenario 2, cross-instance wake-up: the series and their tables, the
//! baseline timed beside them, and the in-process variant (the waiting
//! instances in child processes are in `children`, the `--trace` breakdown
//! in `trace`).

mod children;
mod trace;

pub(crate) use children::{serve_waiting_instance, CHILD_FLAG};

use crate::fleet::{ask, fresh_namespace, instance, key, wait_for, Origin};
use crate::measure::{CpuUse, Percentiles, Probe};
use crate::monitor::CommandLog;
use crate::Args;
use children::wakeup_across_processes;
use coalesce_bench::report::ms;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tower::Layer;
use tower_coalesce::{Outcome, RedisBackend};
use trace::{print_steps, Steps};

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

pub(crate) async fn wakeup_tables(args: &Args, url: &str, probe: &mut Probe) -> Result<(), String> {
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

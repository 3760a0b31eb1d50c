//! Scenario 1, Redis commands per burst: a cold burst of requests for one
//! key over several instances, the commands it cost (`INFO commandstats`
//! and `MONITOR`), its tables, and the command sequence of the first burst.

use crate::fleet::{ask, fresh_namespace, instance, key, Origin};
use crate::measure::{CpuUse, Machine, Probe};
use crate::monitor::{CommandLog, Logged};
use crate::Args;
use coalesce_bench::report::{group, ms};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tower::Layer;
use tower_coalesce::Outcome;

/// Commands that open a connection rather than serve a request: `HELLO`
/// (and `CLIENT SETINFO`) from the client library; `PING` and `SCRIPT LOAD`
/// from `RedisBackend::connect`, which opens its connection and loads its
/// scripts up front.
const SET_UP_COMMANDS: [&str; 4] = ["hello", "client|setinfo", "ping", "script|load"];

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

pub(crate) async fn burst_table(
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

//! Fan-out at a million waiters, against other ways of sharing one
//! computation: how long the answer takes to reach every waiter once the
//! origin returns, and how much memory each waiter costs.
//!
//! ```text
//! cargo run --release -p coalesce-bench --bin fanout
//! cargo run --release -p coalesce-bench --bin fanout -- --n 100000 --runs 9
//! ```
//!
//! Options: `--n N` waiters on one key (default 1,000,000), `--runs R`
//! processes per contender (default 5; medians are reported), `--bursts B`
//! rounds per process (default 2), `--contender NAME` to run one process's
//! rounds here and print its raw result line.
//!
//! Contenders, on a 2-worker Tokio runtime, each waiter a task of its own
//! with the same shape (the contender's future, counted when first polled,
//! then one closure that checks the answer):
//! - `ours`: `CoalesceLayer` with the default configuration over a
//!   `service_fn`; the task calls `oneshot` and reads the response body.
//!   The request carries one `Accept` header, as in `hit_path`: a follower
//!   keeps its request while it waits, so its cost grows with the request.
//! - `async_singleflight`: `Group::work`.
//! - `async_singleflight_http`: an HTTP single-flight on `Group::work`
//!   doing what any HTTP answer takes per waiter: it holds the same
//!   request until answered and gets a response of its own (headers
//!   cloned, body shared) marked with an extension. The floor for
//!   `ours` with `http` types.
//! - `moka_get_with`: `moka::future::Cache::get_with`.
//! - `floor`: tasks awaiting one `tokio::sync::Notify`, woken by
//!   `notify_waiters` from a task: what Tokio itself needs to wake N tasks.
//!
//! A round spawns N waiters, waits until every one has joined and the
//! workers are idle, then lets the origin return. The fan-out runs from the
//! origin's return to the last waiter's answer. Each process is a fresh
//! child, so its peak memory is its own: bytes per waiter is the growth of
//! the peak resident set (`VmHWM`) over its first round, divided by N. It
//! counts everything a waiter holds: the task, the contender's waiting state,
//! and the allocator's overhead (the system allocator here). The first round
//! of a process and the later ones are reported apart: later rounds reuse
//! the heap that earlier waiters left behind, as a long-running server's
//! would, and per-waiter allocations cost differently there. The contenders
//! take turns, one process each, `--runs` times over.

use coalesce_bench::fanout::{contender, round, CONTENDERS, TASK_BYTES};
use coalesce_bench::report::{group, ms, peak_rss_bytes};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long a round waits for anything before it gives up.
const WAIT_LIMIT: Duration = Duration::from_secs(300);

struct Args {
    n: usize,
    runs: usize,
    bursts: usize,
    contender: Option<String>,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = Args {
            n: 1_000_000,
            runs: 5,
            bursts: 2,
            contender: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or(format!("{flag} needs a value"));
            let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
            match flag.as_str() {
                "--n" => args.n = number(value()?)?,
                "--runs" => args.runs = number(value()?)?,
                "--bursts" => args.bursts = number(value()?)?,
                "--contender" => args.contender = Some(value()?),
                "-h" | "--help" => {
                    return Err(format!(
                        "usage: fanout [--n N] [--runs R] [--bursts B] [--contender {}]",
                        CONTENDERS.join("|")
                    ))
                }
                other => return Err(format!("unknown option {other}; try --help")),
            }
        }
        if args.n < 2 || args.runs == 0 || args.bursts == 0 {
            return Err("--n must be at least 2, --runs and --bursts at least 1".into());
        }
        if let Some(name) = &args.contender {
            if !CONTENDERS.contains(&name.as_str()) {
                return Err(format!(
                    "no contender {name}; one of {}",
                    CONTENDERS.join(", ")
                ));
            }
        }
        Ok(args)
    }
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match &args.contender {
        Some(name) => {
            child(name, args.n, args.bursts);
            ExitCode::SUCCESS
        }
        None => parent(&args),
    }
}

/// What a contender's processes measured.
#[derive(Default)]
struct Measured {
    name: String,
    /// Fan-out of each process's first burst.
    first: Vec<Duration>,
    /// Fan-out of the later bursts, once the heap has been used.
    later: Vec<Duration>,
    /// Set-up of each first burst: from the first spawn until all had joined.
    set_up: Vec<Duration>,
    /// Peak resident set growth over each first burst.
    peak_growth: Vec<u64>,
    task_bytes: usize,
}

impl Measured {
    /// `RESULT name task_bytes peak_growth set_up_ns fan_out_ns,..`: one line
    /// for the parent to read; the first fan-out is the first burst's.
    fn line(&self) -> String {
        let fan_out: Vec<_> = self
            .first
            .iter()
            .chain(&self.later)
            .map(|d| d.as_nanos().to_string())
            .collect();
        format!(
            "RESULT {} {} {} {} {}",
            self.name,
            self.task_bytes,
            self.peak_growth[0],
            self.set_up[0].as_nanos(),
            fan_out.join(",")
        )
    }

    fn from_line(line: &str) -> Option<Self> {
        let mut f = line.strip_prefix("RESULT ")?.split(' ');
        let nanos = |s: &str| s.parse().ok().map(Duration::from_nanos);
        let name = f.next()?.to_owned();
        let task_bytes = f.next()?.parse().ok()?;
        let peak_growth = f.next()?.parse().ok()?;
        let set_up = nanos(f.next()?)?;
        let mut fan_out = f.next()?.split(',').map(nanos);
        Some(Self {
            name,
            first: vec![fan_out.next()??],
            later: fan_out.collect::<Option<_>>()?,
            set_up: vec![set_up],
            peak_growth: vec![peak_growth],
            task_bytes,
        })
    }

    fn add(&mut self, other: Measured) {
        self.name = other.name;
        self.task_bytes = other.task_bytes;
        self.first.extend(other.first);
        self.later.extend(other.later);
        self.set_up.extend(other.set_up);
        self.peak_growth.extend(other.peak_growth);
    }
}

fn parent(args: &Args) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("cannot find this program to run its contenders: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "fan-out to {} waiters: {} processes per contender, {} bursts each",
        group(args.n),
        args.runs,
        args.bursts
    );
    let load_before = load_average();
    let mut results: Vec<Measured> = CONTENDERS.iter().map(|_| Measured::default()).collect();
    // Contenders take turns, process after process: a machine whose load
    // drifts during the invocation then weighs on every contender alike.
    for run in 1..=args.runs {
        for (name, result) in CONTENDERS.iter().zip(&mut results) {
            eprint!("run {run}/{}, {name}:", args.runs);
            let out = Command::new(&exe)
                .args(["--contender", name, "--n", &args.n.to_string()])
                .args(["--bursts", &args.bursts.to_string()])
                .stderr(Stdio::inherit())
                .output();
            let measured = out.ok().filter(|o| o.status.success()).and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .find_map(Measured::from_line)
            });
            let Some(m) = measured else {
                eprintln!(" failed");
                return ExitCode::FAILURE;
            };
            eprintln!();
            result.add(m);
        }
    }
    let load_after = load_average();

    let floor = |pick: fn(&Measured) -> &[Duration]| {
        results
            .iter()
            .find(|m| m.name == "floor")
            .map(|m| median(pick(m)))
    };
    let (floor_first, floor_later) = (floor(|m| &m.first), floor(|m| &m.later));
    let cell = |d: &[Duration], floor: Option<Duration>| {
        if d.is_empty() {
            return "– | –".to_owned();
        }
        let m = median(d);
        let (min, max) = (d.iter().min().unwrap(), d.iter().max().unwrap());
        let ratio = floor.map_or("–".to_owned(), |f| {
            format!("{:.2}", m.as_secs_f64() / f.as_secs_f64())
        });
        format!("{} ({}–{}) | {ratio}", ms(m), ms(*min), ms(*max))
    };
    println!();
    println!("{}", machine());
    println!(
        "`cargo run --release -p coalesce-bench --bin fanout -- --n {} --runs {} --bursts {}`, \
         system allocator; load average {load_before} before, {load_after} after",
        args.n, args.runs, args.bursts
    );
    println!();
    println!(
        "| contender | waiters | fan-out, first burst | × floor | fan-out, later bursts | × floor | bytes per waiter | task future | set-up |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in &results {
        let mut growth = m.peak_growth.clone();
        growth.sort_unstable();
        println!(
            "| {} | {} | {} | {} | {} | {} B | {} |",
            m.name,
            group(args.n),
            cell(&m.first, floor_first),
            cell(&m.later, floor_later),
            group((growth[growth.len() / 2] / args.n as u64) as usize),
            m.task_bytes,
            ms(median(&m.set_up)),
        );
    }
    println!();
    println!(
        "Medians (min–max) over {} processes; the first burst runs in a fresh process, \
         the later ones reuse its heap. Bytes per waiter: peak RSS growth over the first \
         burst / N.",
        args.runs
    );
    ExitCode::SUCCESS
}

/// One contender, `bursts` rounds of `n` waiters, in this process. Memory is
/// measured over the first: the heap is still fresh, so its growth is what
/// the waiters hold.
fn child(name: &str, n: usize, bursts: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let contender = contender(name);
    let before = peak_rss_bytes().unwrap_or(0);
    let mut measured = Measured {
        name: name.to_owned(),
        ..Measured::default()
    };
    for burst in 0..bursts {
        let (fan_out, set_up) = round(&rt, contender, n, WAIT_LIMIT);
        eprint!(" fan-out {}", ms(fan_out));
        if burst == 0 {
            let after = peak_rss_bytes().unwrap_or(0);
            measured.peak_growth.push(after.saturating_sub(before));
            measured.set_up.push(set_up);
            measured.first.push(fan_out);
        } else {
            measured.later.push(fan_out);
        }
    }
    measured.task_bytes = TASK_BYTES.load(Ordering::Relaxed);
    println!("{}", measured.line());
}

fn median(d: &[Duration]) -> Duration {
    let mut d = d.to_vec();
    d.sort();
    match d.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => d[n / 2],
        n => (d[n / 2 - 1] + d[n / 2]) / 2,
    }
}

/// The 1-minute load average, to tell a quiet run from a disturbed one.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// CPUs, CPU model and kernel, as far as Linux tells.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
    format!("{cpus} CPUs ({model}), Linux {kernel}")
}

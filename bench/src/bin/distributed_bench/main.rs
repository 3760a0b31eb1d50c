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

mod bursts;
mod fleet;
mod measure;
mod monitor;
mod wakeup;

use bursts::burst_table;
use coalesce_test_redis::RedisServer;
use measure::{load_average, Machine, Probe};
use wakeup::{serve_waiting_instance, wakeup_tables, CHILD_FLAG};

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

//! A cold burst of callers for one large answer, inside one process: the
//! layer alone, without HTTP connections, so what it measures is the
//! layer's own cost per caller — the memory a flight and its callers hold
//! while the answer streams, and how far behind the leader's caller the
//! followers get their first byte.
//!
//! ```text
//! cargo run --release -p coalesce-bench --bin stream_burst
//! cargo run --release -p coalesce-bench --bin stream_burst -- --callers 1000 --mib 4 --runs 5
//! ```
//!
//! Options: `--callers N` (default 1,000), `--mib M`, the answer's size
//! (default 4), `--runs R` processes (default 5; medians are reported),
//! `--child` to run one burst here and print its raw result line.
//!
//! The origin answers after 100 ms, then sends the body at 20 MB/s in
//! 16 KiB chunks, each a fresh allocation (as read from a socket), with
//! `Cache-Control: max-age=60` and its `Content-Length`. The layer runs
//! as the proxy does by default, with the origin's freshness: an answer
//! over 1 MiB (`max_stored_bytes`) is shared with the flight's callers, in
//! every instance, but not stored. With `--instances K` above one, the
//! callers are spread over K layers on one real `redis-server` started
//! here, each its own `RedisBackend`, in one process (so the memory figure
//! is then the fleet's, not an instance's), and the Redis commands of the
//! burst are counted. Each caller is a task on a 2-worker
//! Tokio runtime that sends its request through the layer and reads the
//! whole body, checking its length and the first and last byte of every
//! origin chunk it holds (each chunk is one byte value). Memory per caller is the growth of the
//! peak resident set over the burst (`VmHWM` at the end against `VmRSS`
//! before the first caller), less one body per instance, divided by the
//! callers; the budget it is held to is 2 × the body (per instance) + 2 KiB
//! per caller. Each run is a
//! fresh child process, so its peak is its own.

use bytes::Bytes;
use coalesce_bench::report::{
    command_calls, group, machine, nearest_rank, peak_rss_bytes, rss_bytes,
};
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::{Layer, ServiceExt};
use tower_coalesce::{
    CoalesceConfig, CoalesceLayer, Freshness, OriginFreshness, Outcome, RedisBackend,
};

const CHUNK: usize = 16 * 1024;
const RATE_BYTES_PER_SEC: f64 = 20e6;
const THINK: Duration = Duration::from_millis(100);

/// The byte every position of chunk `n` holds.
fn pattern(n: usize) -> u8 {
    (n % 251) as u8
}

/// The origin's body: `len` bytes in `CHUNK`-byte chunks, each due at the
/// origin's rate from the first, each a fresh allocation.
struct Paced {
    sent: usize,
    len: usize,
    started: Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Paced {
    fn new(len: usize) -> Self {
        Self {
            sent: 0,
            len,
            started: Instant::now(),
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl Body for Paced {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent == self.len {
            return Poll::Ready(None);
        }
        let due = self.started + Duration::from_secs_f64(self.sent as f64 / RATE_BYTES_PER_SEC);
        if Instant::now() < due {
            self.sleep.as_mut().reset(due.into());
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let n = CHUNK.min(self.len - self.sent);
        let chunk = Bytes::from(vec![pattern(self.sent / CHUNK); n]);
        self.sent += n;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact((self.len - self.sent) as u64)
    }
}

/// What one caller saw.
struct Seen {
    instance: usize,
    leader: bool,
    first_byte: Duration,
    last_byte: Duration,
    whole: bool,
}

/// Reads `body` whole, checking where each frame sits; the time of its
/// first byte.
async fn read<B>(mut body: B, len: usize, start: Instant) -> (Option<Duration>, bool)
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut first = None;
    let mut at = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return (first, false);
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        first.get_or_insert_with(|| start.elapsed());
        let mut rest = &data[..];
        while !rest.is_empty() {
            let take = (CHUNK - at % CHUNK).min(rest.len());
            let expected = pattern(at / CHUNK);
            // The first and last byte of each of the origin's chunks a
            // frame holds: every frame's place and length is checked, at a
            // cost that leaves the callers' CPU to the layer.
            if rest[0] != expected || rest[take - 1] != expected {
                return (first, false);
            }
            rest = &rest[take..];
            at += take;
        }
    }
    (first, at == len)
}

/// The layer of one instance: in-process, or on the Redis at `redis`
/// under `namespace`.
async fn layer(redis: Option<&str>, namespace: &str) -> CoalesceLayer {
    // As the proxy runs by default: the origin's `Cache-Control` decides.
    let config = CoalesceConfig::new().freshness(Freshness::Origin(OriginFreshness::new()));
    let Some(url) = redis else {
        return CoalesceLayer::new(config);
    };
    let backend = RedisBackend::builder(url)
        .namespace(namespace)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot use Redis at {url}: {e}"));
    CoalesceLayer::new(config.backend(backend))
}

/// One burst, in this process, spread over `instances` layers (on the
/// Redis at `redis` when more than one): prints `RESULT calls growth
/// leader_instance leader_ttfb_ns instance:ttfb_ns,.. last_byte_ns,..
/// wrong`.
fn child(callers: usize, len: usize, instances: usize, redis: Option<&str>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let origin = tower::service_fn(move |_req: Request<Empty<Bytes>>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(THINK).await;
            let res = Response::builder()
                .header("content-type", "application/octet-stream")
                .header("cache-control", "max-age=60")
                .header("content-length", len)
                .body(Paced::new(len))
                .expect("a response");
            Ok::<_, Infallible>(res)
        }
    });
    let namespace = format!("stream-burst-{}", std::process::id());
    let seen = rt.block_on(async move {
        let mut services = Vec::with_capacity(instances);
        for _ in 0..instances {
            services.push(layer(redis, &namespace).await.layer(origin.clone()));
        }
        let before = rss_bytes().unwrap_or(0);
        let start = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|i| {
                let instance = i % instances;
                let svc = services[instance].clone();
                tokio::spawn(async move {
                    let req = Request::get("http://files.example/report.bin")
                        .body(Empty::new())
                        .expect("a request");
                    let res = svc.oneshot(req).await.expect("infallible");
                    let leader = res.extensions().get::<Outcome>() == Some(&Outcome::Leader);
                    let (first, whole) = read(res.into_body(), len, start).await;
                    Seen {
                        instance,
                        leader,
                        first_byte: first.unwrap_or(Duration::MAX),
                        last_byte: start.elapsed(),
                        whole,
                    }
                })
            })
            .collect();
        let mut seen = Vec::with_capacity(callers);
        for task in tasks {
            seen.push(task.await.expect("a caller's task"));
        }
        (before, seen)
    });
    let (before, seen) = seen;
    let growth = peak_rss_bytes().unwrap_or(0).saturating_sub(before);
    let leader = seen.iter().find(|s| s.leader);
    let followers: Vec<_> = seen
        .iter()
        .filter(|s| !s.leader)
        .map(|s| format!("{}:{}", s.instance, s.first_byte.as_nanos()))
        .collect();
    let last: Vec<_> = seen
        .iter()
        .map(|s| s.last_byte.as_nanos().to_string())
        .collect();
    let wrong = seen.iter().filter(|s| !s.whole).count();
    println!(
        "RESULT {} {} {} {} {} {} {}",
        calls.load(Ordering::SeqCst),
        growth,
        leader.map_or(usize::MAX, |s| s.instance),
        leader.map_or(u128::MAX, |s| s.first_byte.as_nanos()),
        followers.join(","),
        last.join(","),
        wrong
    );
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    nearest_rank(sorted, p).unwrap_or(f64::NAN)
}

struct Args {
    callers: usize,
    mib: usize,
    runs: usize,
    instances: usize,
    child: bool,
    redis: Option<String>,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = Args {
            callers: 1000,
            mib: 4,
            runs: 5,
            instances: 1,
            child: false,
            redis: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or(format!("{flag} needs a value"));
            let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
            match flag.as_str() {
                "--callers" => args.callers = number(value()?)?,
                "--mib" => args.mib = number(value()?)?,
                "--runs" => args.runs = number(value()?)?,
                "--instances" => args.instances = number(value()?)?,
                "--redis" => args.redis = Some(value()?),
                "--child" => args.child = true,
                _ => {
                    return Err("usage: stream_burst [--callers N] [--mib M] [--runs R] \
                                [--instances K] [--child --redis URL]"
                        .into())
                }
            }
        }
        if args.callers < 2 || args.mib == 0 || args.runs == 0 || args.instances == 0 {
            return Err(
                "--callers must be at least 2; --mib, --runs, --instances at least 1".into(),
            );
        }
        Ok(args)
    }
}

/// What the runs measured, each list one value per run.
#[derive(Default)]
struct Runs {
    growth: Vec<f64>,
    leader: Vec<f64>,
    /// First byte after the leader's caller's, ms: followers in its
    /// instance, p50 and p99; then in the other instances.
    local: [Vec<f64>; 2],
    remote: [Vec<f64>; 2],
    last: Vec<f64>,
    /// Per instance per MiB: scripts run (each one round trip), and
    /// every command Redis ran, those inside scripts included.
    scripts: Vec<f64>,
    commands: Vec<f64>,
    failed: bool,
}

impl Runs {
    /// Reads one child's `RESULT` line.
    fn add(&mut self, line: &str) -> String {
        let f: Vec<&str> = line.split(' ').collect();
        let number = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        let calls = f.first().copied().unwrap_or("?");
        let growth = number(1).unwrap_or(f64::NAN);
        let leader_instance = f.get(2).copied().unwrap_or("?");
        let leader = number(3).unwrap_or(f64::NAN) / 1e6;
        let (mut local, mut remote) = (vec![], vec![]);
        for caller in f.get(4).copied().unwrap_or("").split(',') {
            let Some((instance, nanos)) = caller.split_once(':') else {
                continue;
            };
            let gap = nanos.parse::<f64>().unwrap_or(f64::MAX) / 1e6 - leader;
            if instance == leader_instance {
                local.push(gap);
            } else {
                remote.push(gap);
            }
        }
        local.sort_by(f64::total_cmp);
        remote.sort_by(f64::total_cmp);
        let mut lasts: Vec<f64> = f
            .get(5)
            .copied()
            .unwrap_or("")
            .split(',')
            .filter_map(|v| v.parse::<f64>().ok())
            .collect();
        let wrong = f.get(6).copied().unwrap_or("?");
        self.failed |= calls != "1" || wrong != "0";
        self.growth.push(growth);
        self.leader.push(leader);
        for (into, from) in [(&mut self.local, &local), (&mut self.remote, &remote)] {
            into[0].push(percentile(from, 0.5));
            into[1].push(percentile(from, 0.99));
        }
        self.last.push(median(&mut lasts) / 1e6);
        format!(
            "origin calls {calls}, wrong bodies {wrong}, growth {:.1} MiB, leader's first byte \
             {leader:.1} ms; followers after it, same instance p50 {:.2} p99 {:.2} ms, other \
             instances p50 {:.2} p99 {:.2} ms",
            growth / 1048576.0,
            percentile(&local, 0.5),
            percentile(&local, 0.99),
            percentile(&remote, 0.5),
            percentile(&remote, 0.99),
        )
    }
}

/// The scripts Redis ran since its statistics were reset, and all the
/// commands it ran (those inside scripts included), less the statistics'
/// own.
fn commands(redis: &coalesce_test_redis::RedisServer) -> (u64, u64) {
    let info: String = redis
        .try_conn()
        .and_then(|mut conn| redis::cmd("INFO").arg("commandstats").query(&mut conn).ok())
        .unwrap_or_default();
    let mut scripts = 0;
    let mut all = 0;
    for (name, calls) in command_calls(&info) {
        if name.starts_with("eval") {
            scripts += calls;
        }
        if !name.starts_with("info") && !name.starts_with("config") {
            all += calls;
        }
    }
    (scripts, all)
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let len = args.mib * 1024 * 1024;
    if args.child {
        if std::env::var_os("STREAM_BURST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
                .with_writer(std::io::stderr)
                .init();
        }
        child(args.callers, len, args.instances, args.redis.as_deref());
        return ExitCode::SUCCESS;
    }
    // More than one instance share a real Redis, started here.
    let redis = (args.instances > 1).then(coalesce_test_redis::RedisServer::start);
    let exe = std::env::current_exe().expect("this program's path");
    let mut runs = Runs::default();
    for run in 1..=args.runs {
        let mut command = Command::new(&exe);
        command
            .args(["--child", "--callers", &args.callers.to_string()])
            .args(["--mib", &args.mib.to_string()])
            .args(["--instances", &args.instances.to_string()]);
        if let Some(redis) = &redis {
            redis.reset_stats();
            command.args(["--redis", &redis.url()]);
        }
        let out = command
            .stderr(Stdio::inherit())
            .output()
            .expect("a child process");
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
            eprintln!("run {run}: no result ({})", out.status);
            return ExitCode::FAILURE;
        };
        let said = runs.add(line);
        if let Some(redis) = &redis {
            let (scripts, all) = commands(redis);
            let per = (args.instances * args.mib) as f64;
            runs.scripts.push(scripts as f64 / per);
            runs.commands.push(all as f64 / per);
        }
        println!("run {run}/{}: {said}", args.runs);
    }
    let (callers, mib, instances) = (args.callers, args.mib, args.instances);
    let body = len as f64;
    let growth = median(&mut runs.growth);
    // Each instance holds the body once (its own tape).
    let bodies = body * instances as f64;
    let budget = 2.0 * bodies + 2048.0 * callers as f64;
    println!();
    println!("{}", machine());
    println!(
        "`cargo run --release -p coalesce-bench --bin stream_burst -- --callers {callers} --mib {mib} --instances {instances} --runs {}`",
        args.runs
    );
    println!();
    println!("| callers | instances | body | origin calls | peak RSS growth | budget (2 × body per instance + 2 KiB per caller) | beyond one body per instance, per caller | leader's first byte | followers' first byte after it, same instance p50 / p99 | other instances p50 / p99 | last byte, p50 | Redis scripts / all commands, per instance per MiB |");
    println!("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let pair = |v: &mut [Vec<f64>; 2]| {
        if v[0].iter().all(|x| x.is_nan()) {
            return "—".to_string();
        }
        format!("{:.2} / {:.2} ms", median(&mut v[0]), median(&mut v[1]))
    };
    println!(
        "| {} | {instances} | {mib} MiB | {} | {:.1} MiB | {:.1} MiB | {:.0} B | {:.1} ms | {} | {} | {:.0} ms | {} |",
        group(callers),
        if runs.failed { "more than 1, or wrong bytes" } else { "1" },
        growth / 1048576.0,
        budget / 1048576.0,
        (growth - bodies) / callers as f64,
        median(&mut runs.leader),
        pair(&mut runs.local),
        pair(&mut runs.remote),
        median(&mut runs.last),
        if runs.commands.is_empty() {
            "—".to_string()
        } else {
            format!(
                "{:.1} / {:.1}",
                median(&mut runs.scripts),
                median(&mut runs.commands)
            )
        },
    );
    println!();
    println!("Medians over {} processes.", args.runs);
    if runs.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

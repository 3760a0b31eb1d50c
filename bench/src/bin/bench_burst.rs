//! The load client of `scripts/bench-http`: fires N identical `GET`s at one
//! URL at the same moment, each on its own HTTP/1.1 connection, and prints
//! the latency of the answers as percentiles.
//!
//! ```text
//! cargo run --release -p coalesce-bench --bin bench_burst -- URL [OPTIONS]
//!
//!   --requests N        how many concurrent requests (default 1000)
//!   --count-header NAME tally the values of this response header
//!   --settle-ms N       pause between connecting and firing (default 300)
//!   --timeout-ms N      a request that takes longer fails (default 30000)
//! ```
//!
//! Load tools such as `wrk` keep a fixed number of connections busy for a
//! duration; a cold burst needs the opposite: exactly N requests that all
//! arrive while the first one is still at the origin. So every connection
//! is opened first (a TCP handshake is not what is measured), the pause lets
//! the server accept them all, and then the requests are written back to
//! back, one `write` each, before any answer is read. A request's latency
//! runs from the start of the burst to the last byte of its answer; the
//! client's own share of it, the time to write all N, is printed as
//! `sent_ms`.
//!
//! The requests are written and the answers read on plain sockets, not
//! through an HTTP client: with one task per connection, a thousand
//! requests would be handed to a thousand tasks before the first byte went
//! out, and the first answers would wait on that. The reader understands
//! what the servers under test send: a status line, headers, and a body of
//! `Content-Length` bytes or chunks ending in a last chunk.
//!
//! Output is one line of `key=value` fields, for scripts:
//! `requests=1000 ok=1000 failed=0 min_ms=.. p50_ms=.. p90_ms=.. p99_ms=..
//! max_ms=.. sent_ms=.. wall_ms=..`, then `header NAME: VALUE=COUNT ...` if
//! asked.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const USAGE: &str = "\
usage: bench_burst URL [--requests N] [--count-header NAME] [--settle-ms N] [--timeout-ms N]

  URL                 http://host:port/path to request
  --requests N        how many concurrent requests (default 1000)
  --count-header NAME tally the values of this response header
  --settle-ms N       pause between connecting and firing (default 300)
  --timeout-ms N      a request that takes longer fails (default 30000)";

/// Connections opened at a time: a thousand SYNs at once can overflow a
/// server's accept queue, and a dropped SYN costs a one-second retransmit.
const CONNECT_CONCURRENCY: usize = 64;

struct Settings {
    /// `host:port`, to connect to and to name in `Host`.
    authority: String,
    /// The path and query.
    target: String,
    requests: usize,
    /// Lowercase.
    count_header: Option<String>,
    settle: Duration,
    timeout: Duration,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Settings, String> {
    let mut url = None;
    let mut requests = 1000;
    let mut count_header = None;
    let mut settle = Duration::from_millis(300);
    let mut timeout = Duration::from_secs(30);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if !arg.starts_with("--") {
            url = Some(arg);
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{arg} {value:?}: expected a whole number"))
        };
        match arg.as_str() {
            "--requests" => requests = number()? as usize,
            "--settle-ms" => settle = Duration::from_millis(number()?),
            "--timeout-ms" => timeout = Duration::from_millis(number()?),
            "--count-header" => count_header = Some(value.to_ascii_lowercase()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let url = url.ok_or("URL is required")?;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: expected http://host:port/path"))?;
    let (authority, target) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    if !authority.contains(':') || target.contains(char::is_whitespace) {
        return Err(format!("{url:?}: expected http://host:port/path"));
    }
    Ok(Settings {
        authority: authority.to_owned(),
        target: target.to_owned(),
        requests,
        count_header,
        settle,
        timeout,
    })
}

/// What one request came back with.
struct Answer {
    /// When its last byte arrived.
    done: Instant,
    ok: bool,
    header: Option<String>,
}

/// The parts of a response head the client needs.
struct Head {
    /// Its length, up to and including the blank line.
    len: usize,
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    header: Option<String>,
}

fn parse_head(buf: &[u8], count_header: Option<&str>) -> Option<Head> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut head = Head {
        len: end,
        status,
        content_length: None,
        chunked: false,
        header: None,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => head.content_length = value.parse().ok(),
            "transfer-encoding" => head.chunked = value.eq_ignore_ascii_case("chunked"),
            _ => {}
        }
        if count_header == Some(name.as_str()) {
            head.header = Some(value.to_owned());
        }
    }
    Some(head)
}

/// Reads one response from `stream`; `None` if it failed or was malformed.
async fn read_answer(
    stream: &mut TcpStream,
    count_header: Option<&str>,
) -> Option<(bool, Option<String>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut head: Option<Head> = None;
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if head.is_none() {
            head = parse_head(&buf, count_header);
        }
        let Some(h) = &head else { continue };
        let body = &buf[h.len..];
        let complete = match (h.content_length, h.chunked) {
            (_, true) => body.ends_with(b"0\r\n\r\n"),
            (Some(len), false) => body.len() >= len,
            (None, false) => return None,
        };
        if complete {
            let ok = (200..300).contains(&h.status) && !body.is_empty();
            return Some((ok, h.header.clone()));
        }
    }
}

/// The nearest-rank percentile of sorted latencies, in milliseconds.
fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

async fn run(settings: Settings) -> Result<bool, String> {
    let settings = Arc::new(settings);
    let limit = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let connecting: Vec<_> = (0..settings.requests)
        .map(|_| {
            let (limit, settings) = (limit.clone(), settings.clone());
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await;
                let stream = TcpStream::connect(&settings.authority)
                    .await
                    .map_err(|e| format!("connect {}: {e}", settings.authority))?;
                let _ = stream.set_nodelay(true);
                Ok::<_, String>(stream)
            })
        })
        .collect();
    let mut streams = Vec::with_capacity(settings.requests);
    for task in connecting {
        streams.push(task.await.map_err(|e| e.to_string())??);
    }
    tokio::time::sleep(settings.settle).await;

    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        settings.target, settings.authority
    );
    let start = Instant::now();
    // Written without yielding, so no answer is read before every request
    // is out. A fresh socket's send buffer takes a request this small
    // whole; one that does not counts as failed rather than be retried
    // late.
    let mut written = Vec::with_capacity(streams.len());
    for stream in streams {
        let whole = matches!(stream.try_write(request.as_bytes()), Ok(n) if n == request.len());
        written.push((stream, whole));
    }
    let sent = start.elapsed();

    let readers: Vec<_> = written
        .into_iter()
        .map(|(mut stream, whole)| {
            let settings = settings.clone();
            tokio::spawn(async move {
                let outcome = if whole {
                    let read = read_answer(&mut stream, settings.count_header.as_deref());
                    tokio::time::timeout(settings.timeout, read)
                        .await
                        .ok()
                        .flatten()
                } else {
                    None
                };
                let (ok, header) = outcome.unwrap_or((false, None));
                Answer {
                    done: Instant::now(),
                    ok,
                    header,
                }
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(readers.len());
    for task in readers {
        answers.push(task.await.map_err(|e| e.to_string())?);
    }
    let wall = start.elapsed();

    let ok = answers.iter().filter(|a| a.ok).count();
    let mut latencies: Vec<Duration> = answers.iter().map(|a| a.done - start).collect();
    latencies.sort_unstable();
    println!(
        "requests={} ok={ok} failed={} min_ms={:.1} p50_ms={:.1} p90_ms={:.1} p99_ms={:.1} max_ms={:.1} sent_ms={:.1} wall_ms={:.1}",
        answers.len(),
        answers.len() - ok,
        percentile(&latencies, 0.0),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        sent.as_secs_f64() * 1e3,
        wall.as_secs_f64() * 1e3,
    );
    if let Some(name) = &settings.count_header {
        let mut tally = BTreeMap::<String, usize>::new();
        for answer in &answers {
            let value = answer.header.clone().unwrap_or_else(|| "(none)".into());
            *tally.entry(value).or_default() += 1;
        }
        let fields: Vec<String> = tally.iter().map(|(v, n)| format!("{v}={n}")).collect();
        println!("header {name}: {}", fields.join(" "));
    }
    Ok(ok == answers.len())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let settings = match parse(argv) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("bench_burst: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // One thread: the servers under test share the machine's cores with
    // this client, and a single thread takes the least of them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    match runtime.block_on(run(settings)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("bench_burst: {error}");
            ExitCode::FAILURE
        }
    }
}

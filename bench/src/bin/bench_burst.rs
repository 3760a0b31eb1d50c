//! The load client of `scripts/bench-http`: fires N identical `GET`s at one
//! URL (or spread over several) at the same moment, each on its own
//! HTTP/1.1 connection, and prints the latency of the answers as
//! percentiles: to their first body byte and to their last.
//!
//! ```text
//! cargo run --release -p coalesce-bench --bin bench_burst -- URL [URL...] [OPTIONS]
//!
//!   --requests N        how many concurrent requests (default 1000)
//!   --count-header NAME tally the values of this response header
//!   --settle-ms N       pause between connecting and firing (default 300)
//!   --timeout-ms N      a request that takes longer fails (default 30000)
//!   --check-pattern N   every body must be N bytes, byte i being i % 251
//! ```
//!
//! Load tools such as `wrk` keep a fixed number of connections busy for a
//! duration; a cold burst needs the opposite: exactly N requests that all
//! arrive while the first one is still at the origin. So every connection
//! is opened first (a TCP handshake is not what is measured), the pause lets
//! the server accept them all, and then the requests are written back to
//! back, one `write` each, before any answer is read. A request's latency
//! runs from the start of the burst to the last byte of its answer; its
//! time to first byte (`ttfb`), to the first byte of its body (or the end
//! of its head, for an empty body). The client's own share, the time to
//! write all N, is printed as `sent_ms`.
//!
//! With several URLs (instances of a proxy behind one imagined load
//! balancer, say), request `i` goes to URL `i % URLs`, all in the same
//! burst: one start, one set of percentiles.
//!
//! The requests are written and the answers read on plain sockets, not
//! through an HTTP client: with one task per connection, a thousand
//! requests would be handed to a thousand tasks before the first byte went
//! out, and the first answers would wait on that. The reader understands
//! what the servers under test send: a status line, headers, and a body of
//! `Content-Length` bytes or chunks ending in a last chunk. Bodies are
//! checked as they arrive and never kept, so a burst for a large answer
//! costs the client a read buffer per connection, not the answers.
//!
//! Output is one line of `key=value` fields, for scripts:
//! `requests=1000 ok=1000 failed=0 min_ms=.. p50_ms=.. p90_ms=.. p99_ms=..
//! max_ms=.. sent_ms=.. wall_ms=.. ttfb_min_ms=.. ttfb_p50_ms=..
//! ttfb_p99_ms=..` (the last-byte figures over every request, a failed one
//! at the moment it failed; the `ttfb` ones over the requests that
//! succeeded), then one line per reason requests failed for, `failed
//! REASON: requests=.. first_ms=.. last_ms=..`, then, if asked, `header NAME: VALUE=COUNT ...` and one line
//! per value, `by NAME=VALUE: requests=.. ok=.. ttfb_min_ms=..
//! ttfb_p50_ms=.. ttfb_p99_ms=.. p50_ms=.. p99_ms=..`: with a cache's
//! outcome header, the leader's own figures beside its followers'.

use coalesce_bench::report::nearest_rank;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const USAGE: &str = "\
usage: bench_burst URL [URL...] [--requests N] [--count-header NAME] [--settle-ms N]
                   [--timeout-ms N] [--check-pattern N]

  URL                 http://host:port/path to request; with several, the
                      requests are spread over them in turn
  --requests N        how many concurrent requests (default 1000)
  --count-header NAME tally the values of this response header, with the
                      latencies of each value's requests
  --settle-ms N       pause between connecting and firing (default 300)
  --timeout-ms N      a request that takes longer fails (default 30000)
  --check-pattern N   every body must be N bytes, byte i being i % 251
                      (bench_origin's GET /big/{n}); one that is not fails";

/// Connections opened at a time: a thousand SYNs at once can overflow a
/// server's accept queue, and a dropped SYN costs a one-second retransmit.
const CONNECT_CONCURRENCY: usize = 64;

/// How much one `read` takes: large answers arrive in as few reads as the
/// socket allows, small ones need no more.
const READ_BUFFER: usize = 32 * 1024;

/// A head larger than this is not one the servers under test send.
const MAX_HEAD: usize = 64 * 1024;

/// `--check-pattern`'s byte `i` is `i % PATTERN_PERIOD`.
const PATTERN_PERIOD: usize = 251;

/// The pattern, long enough to compare a whole read with at any phase.
static PATTERN: LazyLock<Vec<u8>> = LazyLock::new(|| {
    (0..READ_BUFFER + PATTERN_PERIOD)
        .map(|i| (i % PATTERN_PERIOD) as u8)
        .collect()
});

/// Where one URL's requests go.
struct Target {
    /// `host:port`, to connect to.
    authority: String,
    /// The whole request, written at once.
    request: String,
}

struct Settings {
    targets: Vec<Target>,
    requests: usize,
    /// Lowercase.
    count_header: Option<String>,
    settle: Duration,
    timeout: Duration,
    /// The length every body must have, of the pattern.
    check_pattern: Option<u64>,
}

fn target(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: expected http://host:port/path"))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    if !authority.contains(':') || path.contains(char::is_whitespace) {
        return Err(format!("{url:?}: expected http://host:port/path"));
    }
    Ok(Target {
        authority: authority.to_owned(),
        request: format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n"),
    })
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Settings, String> {
    let mut targets = Vec::new();
    let mut requests = 1000;
    let mut count_header = None;
    let mut settle = Duration::from_millis(300);
    let mut timeout = Duration::from_secs(30);
    let mut check_pattern = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if !arg.starts_with("--") {
            targets.push(target(&arg)?);
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
            "--check-pattern" => check_pattern = Some(number()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if targets.is_empty() {
        return Err("URL is required".into());
    }
    Ok(Settings {
        targets,
        requests,
        count_header,
        settle,
        timeout,
        check_pattern,
    })
}

/// What one request came back with.
struct Answer {
    /// When the first byte of its body arrived (the end of its head, for an
    /// empty body); `None` if it failed.
    first: Option<Instant>,
    /// When its last byte arrived, or it failed.
    done: Instant,
    ok: bool,
    header: Option<String>,
    /// Why it failed, if it did.
    failure: Option<String>,
}

/// The parts of a response head the client needs.
struct Head {
    /// Its length, up to and including the blank line.
    len: usize,
    status: u16,
    content_length: Option<u64>,
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

/// Where a body's reader is in its framing.
enum Framing {
    /// `Content-Length` bytes, this many still to come.
    Length(u64),
    /// Chunked: reading a chunk-size line (kept here until its LF).
    Size(Vec<u8>),
    /// Chunked: this many bytes of the chunk's data still to come.
    Data(u64),
    /// Chunked: the CRLF after a chunk's data, this many of its bytes seen.
    DataEnd(u8),
    /// Chunked: the trailer section after the last chunk, the current line
    /// kept here until its LF; an empty line ends it.
    Trailer(Vec<u8>),
    /// The whole body is in.
    Done,
}

/// Reads a body as it arrives: its framing undone, its bytes counted and,
/// with a pattern to check, compared with it. Nothing is kept.
struct BodyReader {
    framing: Framing,
    /// Body bytes so far.
    received: u64,
    check_pattern: Option<u64>,
}

impl BodyReader {
    fn new(head: &Head, check_pattern: Option<u64>) -> Option<Self> {
        let framing = match (head.chunked, head.content_length) {
            (true, _) => Framing::Size(Vec::new()),
            (false, Some(0)) => Framing::Done,
            (false, Some(len)) => Framing::Length(len),
            // Read to the end of the connection: no server under test
            // answers so.
            (false, None) => return None,
        };
        Some(BodyReader {
            framing,
            received: 0,
            check_pattern,
        })
    }

    fn done(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    /// Takes what arrived; `None` if the body is malformed, or not the
    /// pattern it should be.
    fn feed(&mut self, mut input: &[u8]) -> Option<()> {
        while !input.is_empty() {
            match &mut self.framing {
                Framing::Length(left) => {
                    let take = input.len().min(*left as usize);
                    *left -= take as u64;
                    if *left == 0 {
                        self.framing = Framing::Done;
                    }
                    self.data(&input[..take])?;
                    input = &input[take..];
                }
                Framing::Size(line) => {
                    let (taken, complete) = take_line(line, input)?;
                    input = &input[taken..];
                    if complete {
                        let text = std::str::from_utf8(line).ok()?;
                        // Chunk extensions (";name=value") are ignored.
                        let size = text.split(';').next()?.trim();
                        let size = u64::from_str_radix(size, 16).ok()?;
                        self.framing = if size == 0 {
                            Framing::Trailer(Vec::new())
                        } else {
                            Framing::Data(size)
                        };
                    }
                }
                Framing::Data(left) => {
                    let take = input.len().min(*left as usize);
                    *left -= take as u64;
                    if *left == 0 {
                        self.framing = Framing::DataEnd(0);
                    }
                    self.data(&input[..take])?;
                    input = &input[take..];
                }
                Framing::DataEnd(seen) => {
                    if input[0] != b"\r\n"[usize::from(*seen)] {
                        return None;
                    }
                    input = &input[1..];
                    *seen += 1;
                    if *seen == 2 {
                        self.framing = Framing::Size(Vec::new());
                    }
                }
                Framing::Trailer(line) => {
                    let (taken, complete) = take_line(line, input)?;
                    input = &input[taken..];
                    if complete {
                        if line.is_empty() {
                            self.framing = Framing::Done;
                        } else {
                            line.clear();
                        }
                    }
                }
                // Bytes after the body: not an answer to this one request.
                Framing::Done => return None,
            }
        }
        Some(())
    }

    /// Counts (and checks) body bytes.
    fn data(&mut self, bytes: &[u8]) -> Option<()> {
        let start = self.received;
        self.received += bytes.len() as u64;
        let Some(expected) = self.check_pattern else {
            return Some(());
        };
        if self.received > expected {
            return None;
        }
        let phase = (start % PATTERN_PERIOD as u64) as usize;
        (PATTERN[phase..phase + bytes.len()] == *bytes).then_some(())
    }

    /// Whether the whole body is what it should be.
    fn complete(&self) -> bool {
        self.done()
            && self.received > 0
            && self.check_pattern.is_none_or(|len| self.received == len)
    }
}

/// Adds `input` to `line` up to its LF (which is dropped, with a CR before
/// it); returns the bytes taken and whether the line is complete, or `None`
/// for a line longer than any the servers under test send.
fn take_line(line: &mut Vec<u8>, input: &[u8]) -> Option<(usize, bool)> {
    let (taken, complete) = match input.iter().position(|&b| b == b'\n') {
        Some(lf) => (lf + 1, true),
        None => (input.len(), false),
    };
    line.extend_from_slice(&input[..taken]);
    if line.len() > 4096 {
        return None;
    }
    if complete {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Some((taken, complete))
}

/// What a request that got its whole answer came back with.
struct Reply {
    first: Instant,
    header: Option<String>,
}

/// Reads one response from `stream`; why not, if it failed or was
/// malformed.
async fn read_answer(
    stream: &mut TcpStream,
    count_header: Option<&str>,
    check_pattern: Option<u64>,
) -> Result<Reply, String> {
    let mut chunk = vec![0u8; READ_BUFFER];
    let mut head_bytes = Vec::new();
    let mut head = None;
    let mut body: Option<BodyReader> = None;
    let mut first = None;
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| {
            let at = if head.is_some() {
                "in the body"
            } else {
                "before the head"
            };
            format!("read error {at}: {}", e.kind())
        })?;
        if n == 0 {
            return Err(match &body {
                Some(_) => "closed in the body".to_owned(),
                None if head_bytes.is_empty() => "closed before the head".to_owned(),
                None => "closed in the head".to_owned(),
            });
        }
        let mut input = &chunk[..n];
        let reader = match &mut body {
            Some(reader) => reader,
            None => {
                head_bytes.extend_from_slice(input);
                let Some(h) = parse_head(&head_bytes, count_header) else {
                    if head_bytes.len() > MAX_HEAD {
                        return Err("head too long or malformed".to_owned());
                    }
                    continue;
                };
                // What of this read is body: the head ends within it.
                input = &input[n - (head_bytes.len() - h.len)..];
                let reader = BodyReader::new(&h, check_pattern)
                    .ok_or_else(|| format!("status {} without a length", h.status))?;
                head = Some(h);
                body.insert(reader)
            }
        };
        reader.feed(input).ok_or("malformed or wrong body")?;
        // Framing (a chunk-size line) is not the first byte of the body.
        if first.is_none() && (reader.received > 0 || reader.done()) {
            first = Some(Instant::now());
        }
        if reader.done() {
            let (Some(head), Some(first)) = (head.as_ref(), first) else {
                return Err("no head".to_owned());
            };
            if !(200..300).contains(&head.status) {
                return Err(format!("status {}", head.status));
            }
            if !reader.complete() {
                return Err("body incomplete".to_owned());
            }
            return Ok(Reply {
                first,
                header: head.header.clone(),
            });
        }
    }
}

/// The nearest-rank percentile of sorted latencies, in milliseconds.
fn percentile(sorted: &[Duration], q: f64) -> f64 {
    nearest_rank(sorted, q).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// The figures of a set of answers: `(last byte, first byte of the ones
/// that succeeded)`, each sorted, from `start`.
fn latencies<'a>(
    answers: impl Iterator<Item = &'a Answer>,
    start: Instant,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut last = Vec::new();
    let mut first = Vec::new();
    for answer in answers {
        last.push(answer.done - start);
        if let (true, Some(at)) = (answer.ok, answer.first) {
            first.push(at - start);
        }
    }
    last.sort_unstable();
    first.sort_unstable();
    (last, first)
}

async fn run(settings: Settings) -> Result<bool, String> {
    let settings = Arc::new(settings);
    let limit = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let connecting: Vec<_> = (0..settings.requests)
        .map(|i| {
            let (limit, settings) = (limit.clone(), settings.clone());
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await;
                let authority = &settings.targets[i % settings.targets.len()].authority;
                let stream = TcpStream::connect(authority)
                    .await
                    .map_err(|e| format!("connect {authority}: {e}"))?;
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

    let start = Instant::now();
    // Written without yielding, so no answer is read before every request
    // is out. A fresh socket's send buffer takes a request this small
    // whole; one that does not counts as failed rather than be retried
    // late.
    let mut written = Vec::with_capacity(streams.len());
    for (i, stream) in streams.into_iter().enumerate() {
        let request = settings.targets[i % settings.targets.len()]
            .request
            .as_bytes();
        let whole = matches!(stream.try_write(request), Ok(n) if n == request.len());
        written.push((stream, whole));
    }
    let sent = start.elapsed();

    let readers: Vec<_> = written
        .into_iter()
        .map(|(mut stream, whole)| {
            let settings = settings.clone();
            tokio::spawn(async move {
                let reply = if whole {
                    let read = read_answer(
                        &mut stream,
                        settings.count_header.as_deref(),
                        settings.check_pattern,
                    );
                    tokio::time::timeout(settings.timeout, read)
                        .await
                        .unwrap_or_else(|_| Err("timed out".to_owned()))
                } else {
                    Err("request not written whole".to_owned())
                };
                let done = Instant::now();
                match reply {
                    Ok(reply) => Answer {
                        first: Some(reply.first),
                        done,
                        ok: true,
                        header: reply.header,
                        failure: None,
                    },
                    Err(why) => Answer {
                        first: None,
                        done,
                        ok: false,
                        header: None,
                        failure: Some(why),
                    },
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
    let (last, first) = latencies(answers.iter(), start);
    // The fields scripts already read come first, in their old order; the
    // time-to-first-byte ones follow.
    println!(
        "requests={} ok={ok} failed={} min_ms={:.1} p50_ms={:.1} p90_ms={:.1} p99_ms={:.1} max_ms={:.1} sent_ms={:.1} wall_ms={:.1} ttfb_min_ms={:.1} ttfb_p50_ms={:.1} ttfb_p99_ms={:.1}",
        answers.len(),
        answers.len() - ok,
        percentile(&last, 0.0),
        percentile(&last, 0.50),
        percentile(&last, 0.90),
        percentile(&last, 0.99),
        percentile(&last, 1.0),
        sent.as_secs_f64() * 1e3,
        wall.as_secs_f64() * 1e3,
        percentile(&first, 0.0),
        percentile(&first, 0.50),
        percentile(&first, 0.99),
    );
    // Why requests failed, and when: `failed REASON: requests=N first_ms=..
    // last_ms=..` per reason.
    let mut failures = BTreeMap::<&str, Vec<Duration>>::new();
    for answer in &answers {
        if let Some(why) = &answer.failure {
            failures.entry(why).or_default().push(answer.done - start);
        }
    }
    for (why, at) in &failures {
        println!(
            "failed {why}: requests={} first_ms={:.1} last_ms={:.1}",
            at.len(),
            at.iter().min().unwrap_or(&Duration::ZERO).as_secs_f64() * 1e3,
            at.iter().max().unwrap_or(&Duration::ZERO).as_secs_f64() * 1e3,
        );
    }
    if let Some(name) = &settings.count_header {
        let mut by_value = BTreeMap::<String, Vec<&Answer>>::new();
        for answer in &answers {
            let value = answer.header.clone().unwrap_or_else(|| "(none)".into());
            by_value.entry(value).or_default().push(answer);
        }
        let fields: Vec<String> = by_value
            .iter()
            .map(|(v, answers)| format!("{v}={}", answers.len()))
            .collect();
        println!("header {name}: {}", fields.join(" "));
        for (value, answers) in &by_value {
            let (last, first) = latencies(answers.iter().copied(), start);
            println!(
                "by {name}={value}: requests={} ok={} ttfb_min_ms={:.1} ttfb_p50_ms={:.1} ttfb_p99_ms={:.1} p50_ms={:.1} p99_ms={:.1}",
                answers.len(),
                answers.iter().filter(|a| a.ok).count(),
                percentile(&first, 0.0),
                percentile(&first, 0.50),
                percentile(&first, 0.99),
                percentile(&last, 0.50),
                percentile(&last, 0.99),
            );
        }
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

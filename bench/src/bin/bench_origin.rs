//! The origin for `scripts/bench-http`: a slow JSON endpoint that counts its
//! calls, so a benchmark can tell how many requests a cache or coalescing
//! proxy in front of it let through, and a large answer sent at a set rate.
//!
//! ```text
//! cargo run --release -p coalesce-bench --bin bench_origin -- [OPTIONS]
//!
//!   --listen ADDR          where to listen (default 127.0.0.1:3000)
//!   --delay-ms N           how long each item and large answer takes to
//!                          its head (default 100)
//!   --coalesce-ttl-ms N    serve the items through CoalesceLayer, keeping
//!                          answers for N ms (default: no layer)
//!   --cache-control VALUE  the items' and large answers' Cache-Control
//!                          (default "public, max-age=60")
//!   --big-bytes N          the length of a large answer (default 4194304)
//!   --big-rate N           the bytes per second it is sent at (default
//!                          20000000; 0 sends it as fast as it is read)
//! ```
//!
//! Routes:
//! - `GET /item/{n}` answers after `--delay-ms` with a small JSON body and
//!   `Cache-Control: public, max-age=60` (or `--cache-control`), so any
//!   shared cache may keep it (hyper adds `Date`).
//! - `GET /calls` answers how many times the item handler has run, as a
//!   decimal number (`Cache-Control: no-store`). It is never behind the
//!   layer, so reading it costs no flight and is not counted.
//! - `GET /big/{n}` answers after `--delay-ms` with a head (its
//!   `Content-Length` and the same `Cache-Control`), then sends `--big-bytes`
//!   bytes in 16 KiB chunks at `--big-rate`: a large answer whose body takes
//!   a while to arrive (4 MiB at 20 MB/s: 210 ms after the head). Byte `i`
//!   of the body is `i % 251`, so a client can check every byte it got
//!   (`bench_burst --check-pattern`): 251 is prime, so no buffer a proxy
//!   cuts the body into (a power of two) can be lost, repeated or
//!   misplaced without the bytes after it showing it.
//! - `GET /big-calls` counts the calls of `/big/{n}` alone, as `/calls` does
//!   the items'. Neither route is ever behind the layer.
//!
//! The delays and the pacing are timers, not blocked threads: a burst of
//! 1,000 requests waits concurrently and the origin is never what limits a
//! benchmark. Each chunk is sent when the rate says the bytes up to its end
//! are due (a deadline from the head, not a sleep per chunk), so the rate
//! holds on average though the timer wakes by the millisecond.
//!
//! With `--delay-ms 0`, with and without `--coalesce-ttl-ms`, this is the
//! same app with and without the layer: the fair comparison for the cost
//! of a cached hit over a bare handler.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body::Frame;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower_coalesce::{CoalesceConfig, CoalesceLayer};

const USAGE: &str = "\
usage: bench_origin [--listen ADDR] [--delay-ms N] [--coalesce-ttl-ms N]
                    [--cache-control VALUE] [--big-bytes N] [--big-rate N]

  --listen ADDR          where to listen, IP:PORT (default 127.0.0.1:3000)
  --delay-ms N           how long each item and large answer takes to its
                         head (default 100)
  --coalesce-ttl-ms N    serve the items through CoalesceLayer, keeping
                         answers for N ms (default: no layer)
  --cache-control VALUE  the items' and large answers' Cache-Control
                         (default \"public, max-age=60\")
  --big-bytes N          the length of GET /big/{n}'s body (default 4194304)
  --big-rate N           the bytes per second it is sent at (default
                         20000000; 0: as fast as it is read)";

/// The size of the large answer's chunks.
const BIG_CHUNK: usize = 16 * 1024;

/// The large answer's byte `i` is `i % PATTERN_PERIOD`.
const PATTERN_PERIOD: usize = 251;

struct Settings {
    listen: SocketAddr,
    delay: Duration,
    coalesce_ttl: Option<Duration>,
    cache_control: HeaderValue,
    big_bytes: u64,
    /// Bytes per second; `None` unpaced.
    big_rate: Option<u64>,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Settings, String> {
    let mut settings = Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
        delay: Duration::from_millis(100),
        coalesce_ttl: None,
        cache_control: HeaderValue::from_static("public, max-age=60"),
        big_bytes: 4 * 1024 * 1024,
        big_rate: Some(20_000_000),
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag} {value:?}: expected a whole number"))
        };
        let millis = || number().map(Duration::from_millis);
        match flag.as_str() {
            "--listen" => {
                settings.listen = value
                    .parse()
                    .map_err(|_| format!("--listen {value:?}: expected IP:PORT"))?;
            }
            "--delay-ms" => settings.delay = millis()?,
            "--coalesce-ttl-ms" => settings.coalesce_ttl = Some(millis()?),
            "--cache-control" => {
                settings.cache_control = HeaderValue::from_str(&value)
                    .map_err(|_| format!("--cache-control {value:?}: not a header value"))?;
            }
            "--big-bytes" => settings.big_bytes = number()?,
            "--big-rate" => settings.big_rate = Some(number()?).filter(|&rate| rate > 0),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(settings)
}

#[derive(Clone)]
struct Origin {
    delay: Duration,
    calls: Arc<AtomicU64>,
    big_calls: Arc<AtomicU64>,
    cache_control: HeaderValue,
    big_bytes: u64,
    big_rate: Option<u64>,
    /// The pattern, long enough to cut a chunk at any phase from: the chunk
    /// at body offset `o` is `pattern[o % 251..][..len]`, a slice, not a
    /// copy.
    pattern: Bytes,
}

async fn item(State(origin): State<Origin>, Path(n): Path<String>) -> impl IntoResponse {
    origin.calls.fetch_add(1, Ordering::SeqCst);
    if !origin.delay.is_zero() {
        tokio::time::sleep(origin.delay).await;
    }
    // The segment is echoed back, so it is escaped for the JSON string.
    let mut id = String::with_capacity(n.len());
    for c in n.chars() {
        match c {
            '"' | '\\' => {
                id.push('\\');
                id.push(c);
            }
            c if c.is_control() => id.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => id.push(c),
        }
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, origin.cache_control.clone()),
        ],
        format!(r#"{{"id":"{id}","name":"Tiny Teapot","price_cents":1299,"in_stock":true}}"#),
    )
}

async fn calls(State(origin): State<Origin>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        origin.calls.load(Ordering::SeqCst).to_string(),
    )
}

async fn big(State(origin): State<Origin>, Path(_n): Path<String>) -> Response {
    origin.big_calls.fetch_add(1, Ordering::SeqCst);
    if !origin.delay.is_zero() {
        tokio::time::sleep(origin.delay).await;
    }
    let body = Paced {
        pattern: origin.pattern.clone(),
        total: origin.big_bytes,
        sent: 0,
        rate: origin.big_rate,
        start: Instant::now(),
        sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
    };
    // The body's exact size hint gives the head its Content-Length.
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CACHE_CONTROL, origin.cache_control.clone()),
        ],
        Body::new(body),
    )
        .into_response()
}

async fn big_calls(State(origin): State<Origin>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        origin.big_calls.load(Ordering::SeqCst).to_string(),
    )
}

/// The large answer's body: `total` bytes of the pattern, a chunk at a time,
/// each sent once `rate` says the bytes up to its end are due, counted from
/// `start` (when the head went out).
struct Paced {
    pattern: Bytes,
    total: u64,
    sent: u64,
    rate: Option<u64>,
    start: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl http_body::Body for Paced {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let left = this.total - this.sent;
        if left == 0 {
            return Poll::Ready(None);
        }
        let len = left.min(BIG_CHUNK as u64) as usize;
        if let Some(rate) = this.rate {
            let due =
                this.start + Duration::from_secs_f64((this.sent + len as u64) as f64 / rate as f64);
            if Instant::now() < due {
                this.sleep.as_mut().reset(due);
                if this.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
        let phase = (this.sent % PATTERN_PERIOD as u64) as usize;
        this.sent += len as u64;
        Poll::Ready(Some(Ok(Frame::data(
            this.pattern.slice(phase..phase + len),
        ))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.total
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.total - self.sent)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let settings = match parse(argv) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("bench_origin: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let pattern: Vec<u8> = (0..BIG_CHUNK + PATTERN_PERIOD)
        .map(|i| (i % PATTERN_PERIOD) as u8)
        .collect();
    let origin = Origin {
        delay: settings.delay,
        calls: Arc::new(AtomicU64::new(0)),
        big_calls: Arc::new(AtomicU64::new(0)),
        cache_control: settings.cache_control.clone(),
        big_bytes: settings.big_bytes,
        big_rate: settings.big_rate,
        pattern: Bytes::from(pattern),
    };
    let mut items = Router::new().route("/item/{n}", get(item));
    if let Some(ttl) = settings.coalesce_ttl {
        // No outcome header: the response is byte for byte the bare one, so
        // a throughput comparison measures the layer and nothing else.
        items = items.route_layer(CoalesceLayer::new(CoalesceConfig::new().ttl(ttl)));
    }
    let app = items
        .route("/calls", get(calls))
        .route("/big/{n}", get(big))
        .route("/big-calls", get(big_calls))
        .with_state(origin);
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "bench_origin: cannot listen on {}: {error}",
                settings.listen
            );
            return ExitCode::FAILURE;
        }
    };
    println!(
        "bench_origin: http://{} (delay {} ms, {}; /big/{{n}}: {} bytes at {})",
        settings.listen,
        settings.delay.as_millis(),
        settings
            .coalesce_ttl
            .map_or("no layer".to_owned(), |ttl| format!(
                "CoalesceLayer ttl {} ms",
                ttl.as_millis()
            )),
        settings.big_bytes,
        settings
            .big_rate
            .map_or("full speed".to_owned(), |rate| format!("{rate} B/s")),
    );
    let serve = axum::serve(listener, app).with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    if let Err(error) = serve.await {
        eprintln!("bench_origin: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

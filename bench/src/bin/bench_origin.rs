//! The origin for `scripts/bench-http`: a slow JSON endpoint that counts its
//! calls, so a benchmark can tell how many requests a cache or coalescing
//! proxy in front of it let through.
//!
//! ```text
//! cargo run --release -p coalesce-bench --bin bench_origin -- [OPTIONS]
//!
//!   --listen ADDR          where to listen (default 127.0.0.1:3000)
//!   --delay-ms N           how long each item takes to answer (default 100)
//!   --coalesce-ttl-ms N    serve the items through CoalesceLayer, keeping
//!                          answers for N ms (default: no layer)
//!   --cache-control VALUE  the items' Cache-Control (default
//!                          "public, max-age=60")
//! ```
//!
//! Routes:
//! - `GET /item/{n}` answers after `--delay-ms` with a small JSON body and
//!   `Cache-Control: public, max-age=60` (or `--cache-control`), so any
//!   shared cache may keep it (hyper adds `Date`).
//! - `GET /calls` answers how many times the item handler has run, as a
//!   decimal number (`Cache-Control: no-store`). It is never behind the
//!   layer, so reading it costs no flight and is not counted.
//!
//! The delay is a timer, not a blocked thread: a burst of 1,000 requests
//! waits concurrently and the origin is never what limits a benchmark.
//!
//! With `--delay-ms 0`, with and without `--coalesce-ttl-ms`, this is the
//! same app with and without the layer: the fair comparison for the cost
//! of a cached hit over a bare handler.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower_coalesce::{CoalesceConfig, CoalesceLayer};

const USAGE: &str = "\
usage: bench_origin [--listen ADDR] [--delay-ms N] [--coalesce-ttl-ms N]
                    [--cache-control VALUE]

  --listen ADDR          where to listen, IP:PORT (default 127.0.0.1:3000)
  --delay-ms N           how long each item takes to answer (default 100)
  --coalesce-ttl-ms N    serve the items through CoalesceLayer, keeping
                         answers for N ms (default: no layer)
  --cache-control VALUE  the items' Cache-Control (default
                         \"public, max-age=60\")";

struct Settings {
    listen: SocketAddr,
    delay: Duration,
    coalesce_ttl: Option<Duration>,
    cache_control: HeaderValue,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Settings, String> {
    let mut settings = Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
        delay: Duration::from_millis(100),
        coalesce_ttl: None,
        cache_control: HeaderValue::from_static("public, max-age=60"),
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let millis = || {
            value
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("{flag} {value:?}: expected milliseconds"))
        };
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
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(settings)
}

#[derive(Clone)]
struct Origin {
    delay: Duration,
    calls: Arc<AtomicU64>,
    cache_control: HeaderValue,
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
    let origin = Origin {
        delay: settings.delay,
        calls: Arc::new(AtomicU64::new(0)),
        cache_control: settings.cache_control.clone(),
    };
    let mut items = Router::new().route("/item/{n}", get(item));
    if let Some(ttl) = settings.coalesce_ttl {
        // No outcome header: the response is byte for byte the bare one, so
        // a throughput comparison measures the layer and nothing else.
        items = items.route_layer(CoalesceLayer::new(CoalesceConfig::new().ttl(ttl)));
    }
    let app = items.route("/calls", get(calls)).with_state(origin);
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
        "bench_origin: http://{} (delay {} ms, {})",
        settings.listen,
        settings.delay.as_millis(),
        settings
            .coalesce_ttl
            .map_or("no layer".to_owned(), |ttl| format!(
                "CoalesceLayer ttl {} ms",
                ttl.as_millis()
            )),
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

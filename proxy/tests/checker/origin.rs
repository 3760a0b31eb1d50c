//! The versioned origin: each resource has a version that writes raise, and
//! every answer says which resource and version it is and when it was made,
//! so the checker can tell how old and how current any answer it got is.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the origin answers for one resource.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// `max-age`, seconds.
    pub max_age: u64,
    /// `stale-while-revalidate`, seconds.
    pub swr: u64,
    /// `stale-if-error`, seconds.
    pub sie: u64,
    /// Its tag, in `surrogate-key`.
    pub tag: &'static str,
    /// 0: a body of one short line. Otherwise the body is exactly this
    /// long, with a `Content-Length`, and comes in pieces: the line, then
    /// [`filler`] bytes, 16 KiB every 2 ms.
    pub size: usize,
}

/// The resources `/r/0` … : short-lived ones with each stale window, and
/// long-lived ones that only a purge brings up to date. The last is
/// streamed: longer than one write of a stream through Redis (64 KiB), so
/// the instances waiting on a flight read it from Redis as it arrives, and
/// short enough to be stored.
pub const RESOURCES: [Spec; 4] = [
    Spec {
        max_age: 1,
        swr: 0,
        sie: 30,
        tag: "g0",
        size: 0,
    },
    Spec {
        max_age: 30,
        swr: 0,
        sie: 0,
        tag: "g1",
        size: 0,
    },
    Spec {
        max_age: 1,
        swr: 2,
        sie: 0,
        tag: "g0",
        size: 0,
    },
    Spec {
        max_age: 30,
        swr: 0,
        sie: 0,
        tag: "g1",
        size: 300_000,
    },
];

/// The byte at `at` of a streamed body, past its first line.
pub fn filler(at: usize) -> u8 {
    b'a' + (at % 26) as u8
}

/// The tags the resources carry.
pub const TAGS: [&str; 2] = ["g0", "g1"];

/// One call the origin answered for a `GET`.
#[derive(Debug, Clone)]
pub struct Call {
    pub resource: usize,
    pub start: Duration,
    pub end: Duration,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Per resource, its versions and when each began.
    versions: Vec<Vec<(u64, Duration)>>,
    /// Until when `GET`s fail with a `503`.
    failing_until: Option<Duration>,
    calls: Vec<Call>,
}

/// The origin, serving on a loopback port until dropped.
#[derive(Clone)]
pub struct Origin {
    state: Arc<Mutex<Ledger>>,
    base: Instant,
    pub addr: SocketAddr,
}

impl Origin {
    /// Starts it; `base` is the history's clock.
    pub async fn start(base: Instant) -> Self {
        let state = Ledger {
            versions: RESOURCES
                .iter()
                .map(|_| vec![(1, Duration::ZERO)])
                .collect(),
            ..Ledger::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let origin = Origin {
            state: Arc::new(Mutex::new(state)),
            base,
            addr,
        };
        let app = Router::new()
            .route("/r/{i}", get(answer).put(write))
            .with_state(origin.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        origin
    }

    fn now(&self) -> Duration {
        self.base.elapsed()
    }

    /// The current version of `resource`.
    pub fn version(&self, resource: usize) -> u64 {
        self.state.lock().unwrap().versions[resource]
            .last()
            .unwrap()
            .0
    }

    /// Raises `resource`'s version (a write the proxies do not see).
    pub fn bump(&self, resource: usize) -> u64 {
        let now = self.now();
        let mut state = self.state.lock().unwrap();
        let versions = &mut state.versions[resource];
        let next = versions.last().unwrap().0 + 1;
        versions.push((next, now));
        next
    }

    /// `GET`s fail with a `503` for `for_`.
    pub fn fail_for(&self, for_: Duration) {
        let until = self.now() + for_;
        self.state.lock().unwrap().failing_until = Some(until);
    }

    /// The `GET` calls it answered.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }
}

async fn answer(State(origin): State<Origin>, Path(i): Path<usize>) -> Response {
    let start = origin.now();
    let Some(spec) = RESOURCES.get(i) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // Long enough for concurrent requests to meet in one flight.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut headers = HeaderMap::new();
    let end = origin.now();
    let (failing, version, call) = {
        let mut state = origin.state.lock().unwrap();
        state.calls.push(Call {
            resource: i,
            start,
            end,
        });
        let failing = state.failing_until.is_some_and(|until| end < until);
        let call = state.calls.len() - 1;
        (failing, state.versions[i].last().unwrap().0, call)
    };
    if failing {
        headers.insert("cache-control", HeaderValue::from_static("no-store"));
        return (StatusCode::SERVICE_UNAVAILABLE, headers, "failing").into_response();
    }
    let cache_control = format!(
        "max-age={}, stale-while-revalidate={}, stale-if-error={}",
        spec.max_age, spec.swr, spec.sie
    );
    headers.insert("cache-control", cache_control.parse().unwrap());
    headers.insert("surrogate-key", HeaderValue::from_static(spec.tag));
    let made = origin.now().as_micros();
    let line = format!("r{i} v{version} m{made}");
    if spec.size == 0 {
        return (StatusCode::OK, headers, line).into_response();
    }
    headers.insert("content-length", spec.size.into());
    (
        StatusCode::OK,
        headers,
        streamed(origin, call, line, spec.size),
    )
        .into_response()
}

/// A body of `size` bytes: `line`, a newline, then [`filler`], 16 KiB
/// every 2 ms. The origin's `call` ends with its last piece.
fn streamed(origin: Origin, call: usize, line: String, size: usize) -> Body {
    const PIECE: usize = 16 << 10;
    let mut first = line.into_bytes();
    first.push(b'\n');
    let pieces = futures_util::stream::unfold(0, move |at| {
        let origin = origin.clone();
        let first = first.clone();
        async move {
            if at >= size {
                origin.state.lock().unwrap().calls[call].end = origin.now();
                return None;
            }
            if at > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let end = (at + PIECE).min(size);
            let piece: Vec<u8> = (at..end)
                .map(|k| first.get(k).copied().unwrap_or_else(|| filler(k)))
                .collect();
            Some((Ok::<_, std::convert::Infallible>(piece), end))
        }
    });
    Body::from_stream(pieces)
}

async fn write(State(origin): State<Origin>, Path(i): Path<usize>) -> StatusCode {
    if i >= RESOURCES.len() {
        return StatusCode::NOT_FOUND;
    }
    origin.bump(i);
    StatusCode::NO_CONTENT
}

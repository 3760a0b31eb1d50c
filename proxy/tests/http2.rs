//! HTTP/2 through the proxy, over real TCP: clients speaking HTTP/2 with
//! prior knowledge (h2c) beside HTTP/1.1 on one listener, a burst
//! multiplexed on one connection coalesced into one upstream call, a body
//! that fails mid-way reset as a stream (the connection lives on), and an
//! upstream spoken to in HTTP/2.

mod support;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing;
use axum::Router;
use bytes::Bytes;
use http::{Request, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Counts calls, holds `/slow` until the gate opens, and records the HTTP
/// version each request came in.
#[derive(Clone)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    versions: Arc<Mutex<Vec<Version>>>,
}

async fn slow(State(up): State<Upstream>, req: Request<Body>) -> impl IntoResponse {
    up.calls.fetch_add(1, Ordering::SeqCst);
    up.versions.lock().unwrap().push(req.version());
    let _permit = up.gate.acquire().await.unwrap();
    ([("cache-control", "max-age=60")], "the slow answer")
}

/// 64 KiB, then an error: the upstream's connection closes mid-body.
async fn broken(State(up): State<Upstream>) -> impl IntoResponse {
    up.calls.fetch_add(1, Ordering::SeqCst);
    let chunks = futures_util::stream::unfold(0, |i| async move {
        match i {
            0 => Some((Ok(Bytes::from(vec![b'x'; 64 * 1024])), 1)),
            1 => {
                // Long enough for the head and the first bytes to leave.
                tokio::time::sleep(Duration::from_millis(200)).await;
                Some((Err(std::io::Error::other("the database went away")), 2))
            }
            _ => None,
        }
    });
    (
        [
            ("content-length", "1048576"),
            ("cache-control", "max-age=60"),
        ],
        Body::from_stream(chunks),
    )
}

async fn upstream() -> (Upstream, Uri) {
    let up = Upstream {
        calls: Arc::default(),
        gate: Arc::new(Semaphore::new(0)),
        versions: Arc::default(),
    };
    let app = Router::new()
        .route("/slow", routing::get(slow))
        .route("/broken", routing::get(broken))
        .with_state(up.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap());
    // axum serves HTTP/1.1 and h2c alike.
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (up, uri.parse().unwrap())
}

async fn proxy(upstream: &Uri, extra: &[&str]) -> (SocketAddr, coalesce_proxy::ProxyLayer) {
    let mut argv = support::args(&["--upstream", &upstream.to_string()]);
    argv.extend(support::args(extra));
    let (addr, layer, _) = support::start(&argv).await;
    (addr, layer)
}

/// An HTTP/2 connection to `addr` with prior knowledge: every request sent
/// on it is a stream of that one connection.
async fn h2_connection(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    send
}

fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap()
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_multiplexed_on_one_http2_connection_costs_one_upstream_call() {
    let (up, upstream) = upstream().await;
    let (addr, layer) = proxy(&upstream, &[]).await;
    let h2 = h2_connection(addr).await;
    let burst: Vec<_> = (0..50)
        .map(|_| tokio::spawn(h2.clone().send_request(get(addr, "/slow"))))
        .collect();
    until("every request of the burst in the flight", || {
        layer.stats().followers == 49
    })
    .await;
    up.gate.add_permits(1);
    let mut outcomes = Vec::new();
    for res in burst {
        let res = res.await.unwrap().unwrap();
        assert_eq!(res.version(), Version::HTTP_2);
        assert_eq!(res.status(), StatusCode::OK);
        outcomes.push(res.headers()["x-coalesce"].to_str().unwrap().to_owned());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "the slow answer");
    }
    assert_eq!(up.calls.load(Ordering::SeqCst), 1);
    assert_eq!(outcomes.iter().filter(|o| *o == "leader").count(), 1);
    assert_eq!(
        outcomes.iter().filter(|o| *o == "follower").count(),
        49,
        "{outcomes:?}"
    );
    // Over HTTP/1.1 on the same listener, the stored answer.
    let http1 = Client::builder(TokioExecutor::new()).build_http();
    let res = http1.request(get(addr, "/slow")).await.unwrap();
    assert_eq!(res.version(), Version::HTTP_11);
    assert_eq!(res.headers()["x-coalesce"], "hit");
    // The upstream was spoken to in HTTP/1.1: no flag asked otherwise.
    assert_eq!(*up.versions.lock().unwrap(), [Version::HTTP_11]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_failing_mid_way_resets_the_http2_stream_not_the_connection() {
    let (up, upstream) = upstream().await;
    let (addr, _) = proxy(&upstream, &[]).await;
    let mut h2 = h2_connection(addr).await;
    let res = h2.send_request(get(addr, "/broken")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let error = res
        .into_body()
        .collect()
        .await
        .expect_err("a body that failed upstream must not end cleanly");
    let reset = std::iter::successors(Some(&error as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .filter_map(|e| e.downcast_ref::<h2::Error>())
    .any(|e| e.is_reset());
    assert!(reset, "not a stream reset: {error:?}");
    // The connection serves the next request: only the stream was reset.
    up.gate.add_permits(1);
    let res = h2.send_request(get(addr, "/slow")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Nothing was stored: the next request for it calls the upstream.
    let calls = up.calls.load(Ordering::SeqCst);
    let res = h2.send_request(get(addr, "/broken")).await.unwrap();
    let _ = res.into_body().collect().await;
    assert_eq!(up.calls.load(Ordering::SeqCst), calls + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_http2_speaks_h2c_to_the_upstream() {
    let (up, upstream) = upstream().await;
    let (addr, _) = proxy(&upstream, &["--upstream-http2"]).await;
    let http1 = Client::builder(TokioExecutor::new()).build_http();
    up.gate.add_permits(1);
    let burst: Vec<_> = (0..10)
        .map(|_| tokio::spawn(http1.request(get(addr, "/slow"))))
        .collect();
    for res in burst {
        let res = res.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let versions = up.versions.lock().unwrap().clone();
    assert!(
        !versions.is_empty() && versions.iter().all(|v| *v == Version::HTTP_2),
        "{versions:?}"
    );
}

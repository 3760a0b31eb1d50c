//! The proxy's limits over real TCP: request bodies over the limit get
//! `413` (declared or chunked) and never reach the upstream whole;
//! connections past the limit wait for a place; a client slow to send its
//! head is cut at the header read timeout; an idle HTTP/2 connection is
//! closed at the idle timeout, and a busy one is not.

mod support;

use axum::body::Bytes;
use axum::routing::{get, post};
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers `POST /echo` with the body it read whole, and
/// counts those it read whole.
async fn upstream() -> (String, Arc<AtomicUsize>) {
    let echoed = Arc::new(AtomicUsize::new(0));
    let counted = echoed.clone();
    let app = Router::new()
        .route(
            "/echo",
            post(move |body: Bytes| async move {
                counted.fetch_add(1, Ordering::SeqCst);
                (StatusCode::CREATED, body)
            }),
        )
        .route("/r", get(|| async { "an answer" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(800)).await;
                "a slow answer"
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (uri, echoed)
}

async fn proxy(upstream: &str, extra: &[&str]) -> SocketAddr {
    let mut argv = support::args(&["--upstream", upstream]);
    argv.extend(support::args(extra));
    support::start(&argv).await.0
}

#[tokio::test]
async fn a_request_body_over_the_limit_gets_413() {
    let (upstream, echoed) = upstream().await;
    let addr = proxy(&upstream, &["--max-request-body-bytes", "1000"]).await;
    let url = format!("http://{addr}/echo");

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let send = |len: usize| {
        let req = Request::post(url.as_str())
            .body(Full::new(Bytes::from(vec![b'a'; len])))
            .unwrap();
        client.request(req)
    };
    // Declared: refused before the upstream is asked.
    assert_eq!(
        send(2000).await.unwrap().status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(echoed.load(Ordering::SeqCst), 0);
    // Within the limit: the upstream gets it whole.
    let res = send(1000).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes().len(),
        1000
    );

    // Chunked, no length declared: cut off where it passes the limit.
    type Chunks = StreamBody<
        futures_util::stream::Iter<
            std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>,
        >,
    >;
    let chunked = Client::builder(TokioExecutor::new()).build_http::<Chunks>();
    let frames: Vec<_> = (0..4)
        .map(|_| Ok(Frame::data(Bytes::from(vec![b'a'; 600]))))
        .collect();
    let req = Request::post(url.as_str())
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let res = chunked.request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        echoed.load(Ordering::SeqCst),
        1,
        "only the body within the limit"
    );
}

/// Sends a keep-alive `GET /r` on `stream` and reads until its answer's
/// status line; `None` if none came within `within`.
async fn ask(stream: &mut TcpStream, within: Duration) -> Option<String> {
    stream
        .write_all(b"GET /r HTTP/1.1\r\nhost: shop.example\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(within, stream.read(&mut buf))
        .await
        .ok()?
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    Some(head.lines().next()?.to_owned())
}

#[tokio::test]
async fn connections_past_the_limit_wait_for_a_place() {
    let (upstream, _) = upstream().await;
    let addr = proxy(&upstream, &["--max-connections", "1"]).await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    let ok = Some("HTTP/1.1 200 OK".to_owned());
    assert_eq!(ask(&mut first, Duration::from_secs(5)).await, ok);
    // The second connection is in the backlog: not served while the first
    // is open...
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert_eq!(ask(&mut second, Duration::from_millis(300)).await, None);
    // ...and served once it closes.
    drop(first);
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("the waiting connection was never served")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn a_client_slow_to_send_its_head_is_cut_at_the_header_read_timeout() {
    let (upstream, _) = upstream().await;
    let addr = proxy(&upstream, &["--header-read-timeout-ms", "300"]).await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let start = std::time::Instant::now();
    slow.write_all(b"GET /r HTTP/1.1\r\nhost: shop.example\r\n")
        .await
        .unwrap();
    // The head never ends: the proxy closes the connection (with a 408 or
    // without a word), never answers, never waits forever.
    let mut buf = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("the connection was still open after 5 s");
    let said = match read {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).to_string(),
        Err(_) => String::new(),
    };
    assert!(
        said.is_empty() || said.starts_with("HTTP/1.1 408"),
        "{said}"
    );
    assert!(start.elapsed() >= Duration::from_millis(250));
    // A client that sends its head in time is answered.
    let mut prompt = TcpStream::connect(addr).await.unwrap();
    let ok = Some("HTTP/1.1 200 OK".to_owned());
    assert_eq!(ask(&mut prompt, Duration::from_secs(5)).await, ok);
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_at_the_idle_timeout_and_a_busy_one_is_not() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (upstream, _) = upstream().await;
    let addr = proxy(&upstream, &["--idle-timeout-ms", "300"]).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    // A request that takes longer than the idle timeout is answered whole:
    // the connection is not idle while it is in progress.
    let req = Request::get(format!("http://{addr}/slow"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "a slow answer");
    // Then, idle, the proxy sends GOAWAY and the connection ends: not
    // before a whole idle timeout has passed...
    let mut connection = connection;
    let early = tokio::time::timeout(Duration::from_millis(200), &mut connection).await;
    assert!(early.is_err(), "closed before it had been idle a timeout");
    // ...and within a few.
    tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the idle HTTP/2 connection was still open after 5 s")
        .unwrap()
        .unwrap();
}

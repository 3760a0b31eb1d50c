//! Body-keyed requests to an axum server over real TCP: a large chunked
//! body reaches the handler byte for byte, variants share one handler
//! call, and a leader whose client hangs up leaves its followers answered.

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_coalesce::body_keys::{BodyKeys, BufferedBody, Route};
use tower_coalesce::{CoalesceBody, CoalesceConfig, CoalesceLayer, HttpKey};

type Chunks = StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
>;

/// A server whose `POST /search` answers with the body it got, once its
/// gate lets it; counts handler calls and callers dropped unanswered.
struct Server {
    addr: SocketAddr,
    layer: CoalesceLayer<BodyKeys>,
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    dropped: Arc<AtomicUsize>,
}

/// Counts a caller's future dropped before it answered.
struct Unfinished(Arc<AtomicUsize>, bool);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn server(limit: usize) -> Server {
    let calls: Arc<AtomicUsize> = Arc::default();
    let dropped: Arc<AtomicUsize> = Arc::default();
    let gate = Arc::new(Semaphore::new(0));
    let (c, g) = (Arc::clone(&calls), Arc::clone(&gate));
    let router = Router::new().route(
        "/search",
        post(move |body: Bytes| {
            let (c, g) = (Arc::clone(&c), Arc::clone(&g));
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                g.acquire().await.unwrap().forget();
                body
            }
        }),
    );
    let keys =
        BodyKeys::new(HttpKey::new()).route(Route::json(Method::POST, "/search").limit(limit));
    let layer = CoalesceLayer::builder(CoalesceConfig::new().methods(keys.methods()))
        .extractor(keys.clone())
        .build()
        .unwrap();
    let d = Arc::clone(&dropped);
    let service = ServiceBuilder::new()
        .map_future(move |answer| {
            let dropped = Arc::clone(&d);
            async move {
                let mut unfinished = Unfinished(dropped, false);
                let answered = answer.await;
                unfinished.1 = true;
                answered
            }
        })
        .map_response(|res: Response<CoalesceBody<Body>>| res.map(Body::new))
        .layer(keys.buffer_layer())
        .map_request(|req: Request<BufferedBody<Body>>| req.map(Body::new))
        .layer(layer.clone())
        .service(router);
    let app = Router::new().fallback_service(service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        addr,
        layer,
        calls,
        gate,
        dropped,
    }
}

impl Server {
    /// Waits for `what` to hold, up to 20 s.
    async fn until(&self, what: &str, holds: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !holds(self) {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Sends `POST /search` with a body of `chunks` on a connection of its
/// own; the answer's status and body.
async fn ask(addr: SocketAddr, chunks: Vec<Bytes>) -> (StatusCode, Bytes) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Chunks>(TokioIo::new(stream))
            .await
            .unwrap();
    let frames: Vec<_> = chunks.into_iter().map(|c| Ok(Frame::data(c))).collect();
    let req = Request::post("/search")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    // The connection lives as long as this future: dropping it hangs up.
    let answer = async {
        let res = sender.send_request(req).await.unwrap();
        let status = res.status();
        (status, res.into_body().collect().await.unwrap().to_bytes())
    };
    tokio::select! {
        answer = answer => answer,
        _ = connection => panic!("the connection closed before the answer"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_reaches_the_handler_byte_for_byte() {
    let server = server(1024).await;
    server.gate.add_permits(100);
    // 256 KiB of JSON in 4 KiB chunks: `["…","…",…]`.
    let mut body = b"[".to_vec();
    for i in 0..(256 * 1024 / 16) {
        body.extend_from_slice(format!("\"{:012}\",", i * 7919 % 1_000_003).as_bytes());
    }
    *body.last_mut().unwrap() = b']';
    let body = Bytes::from(body);
    let chunks: Vec<Bytes> = body.chunks(4096).map(Bytes::copy_from_slice).collect();
    let answers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(ask(server.addr, chunks.clone())))
        .collect();
    for answer in answers {
        let (status, echoed) = answer.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(echoed, body, "the handler got other bytes");
    }
    assert_eq!(
        server.calls(),
        3,
        "a body past the limit is never coalesced"
    );
    assert_eq!(server.layer.stats().bypasses, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_variants_share_one_handler_call() {
    const N: usize = 100;
    let server = server(64 * 1024).await;
    let variant = |i: usize| match i % 2 {
        0 => Bytes::from(format!("{{\"q\":\"lamp\",{}\"page\":1}}", " ".repeat(i))),
        _ => Bytes::from(format!(
            "{{\n\"page\": 1,\n\"q\": \"lamp\"}}{}",
            "\n".repeat(i)
        )),
    };
    // The first body in two chunks: read whole, it still keys alike.
    let first = variant(0);
    let mut answers = vec![tokio::spawn(ask(
        server.addr,
        vec![first.slice(..5), first.slice(5..)],
    ))];
    answers.extend((1..N).map(|i| tokio::spawn(ask(server.addr, vec![variant(i)]))));
    server
        .until("every follower", |s| {
            s.layer.stats().followers == (N - 1) as u64
        })
        .await;
    server.gate.add_permits(1);
    let mut bodies = std::collections::HashSet::new();
    for answer in answers {
        let (status, echoed) = answer.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        bodies.insert(echoed);
    }
    assert_eq!(server.calls(), 1);
    assert_eq!(bodies.len(), 1, "one answer, the leader's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_client_hangs_up_leaves_its_followers_answered() {
    const N: usize = 20;
    let server = server(64 * 1024).await;
    let body = || vec![Bytes::from_static(br#"{"q":"lamp"}"#)];
    let leader = tokio::spawn(ask(server.addr, body()));
    server.until("the handler's call", |s| s.calls() == 1).await;
    let followers: Vec<_> = (0..N)
        .map(|_| tokio::spawn(ask(server.addr, body())))
        .collect();
    server
        .until("the followers", |s| s.layer.stats().followers == N as u64)
        .await;
    leader.abort();
    server
        .until("the leader's caller to be dropped", |s| {
            s.dropped.load(Ordering::SeqCst) == 1
        })
        .await;
    server.gate.add_permits(1);
    for follower in followers {
        let (status, echoed) = follower.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(echoed, body()[0]);
    }
    assert_eq!(server.calls(), 1);
    assert_eq!(server.layer.flights_in_progress(), 0);
}

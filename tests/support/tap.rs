//! An origin that sends each answer's body as the test says: what the test
//! sends through a call's [`Tap`] becomes the body, when it sends it, so
//! tests prove the order of events by their own steps, not by timing.

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http::Response;
use http_body::Frame;
use http_body_util::StreamBody;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tower_coalesce::{BoxError, CoalesceLayer};

pub type Chunk = Result<Frame<Bytes>, BoxError>;

/// The origin's end of one call: what the test sends becomes the answer's
/// body, as it sends it.
pub struct Tap(mpsc::Sender<Chunk>);

impl Tap {
    pub async fn send(&self, bytes: &[u8]) {
        self.0
            .send(Ok(Frame::data(Bytes::copy_from_slice(bytes))))
            .await
            .expect("the flight reads the origin");
    }

    /// Ends the body with these trailers.
    pub async fn trailers(self, trailers: http::HeaderMap) {
        self.0
            .send(Ok(Frame::trailers(trailers)))
            .await
            .expect("the flight reads the origin");
    }

    pub async fn fail(self) {
        let _ = self
            .0
            .send(Err("the origin's connection broke".into()))
            .await;
    }
}

/// An origin whose every call answers `200` with these headers at once, and
/// a body the test sends through the call's [`Tap`]. A call with `Range:
/// bytes=N-` (and an `If-Range` that is the answer's `ETag`, if any) of an
/// answer with a `Content-Length` is answered `206` for the bytes from N:
/// the test sends those.
pub struct Origin {
    calls: Arc<AtomicUsize>,
    taps: mpsc::UnboundedReceiver<Tap>,
    /// The `Range` of each call that had one.
    ranges: Arc<Mutex<Vec<String>>>,
    pub service: Router,
}

impl Origin {
    pub fn new(headers: &[(&'static str, String)]) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let (tap_tx, taps) = mpsc::unbounded_channel();
        let headers = headers.to_vec();
        let counted = calls.clone();
        let asked = ranges.clone();
        let service = Router::new().fallback(move |req: Request<Body>| {
            counted.fetch_add(1, Ordering::SeqCst);
            // Noted before the tap goes out: a test that has the tap sees it.
            let range = req
                .headers()
                .get("range")
                .map(|r| r.to_str().unwrap().to_owned());
            if let Some(range) = &range {
                asked.lock().unwrap().push(range.clone());
            }
            // One chunk in flight at a time: the origin sends as fast as
            // the flight reads.
            let (tx, rx) = mpsc::channel::<Chunk>(1);
            let _ = tap_tx.send(Tap(tx));
            let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            });
            let mut res = Response::new(Body::new(StreamBody::new(chunks)));
            for (name, value) in &headers {
                res.headers_mut()
                    .insert(*name, value.parse().expect("a header value"));
            }
            if let Some(range) = range {
                let tag = res.headers().get("etag");
                let same = req.headers().get("if-range").is_none_or(|t| Some(t) == tag);
                let len = res.headers().get("content-length");
                let len: Option<u64> = len.map(|l| l.to_str().unwrap().parse().unwrap());
                let from = range
                    .strip_prefix("bytes=")
                    .and_then(|r| r.strip_suffix('-'));
                if let (true, Some(len), Some(from)) = (same, len, from) {
                    let from: u64 = from.parse().unwrap();
                    *res.status_mut() = http::StatusCode::PARTIAL_CONTENT;
                    let headers = res.headers_mut();
                    let content_range = format!("bytes {from}-{}/{len}", len - 1);
                    headers.insert("content-range", content_range.parse().unwrap());
                    headers.insert("content-length", (len - from).into());
                }
            }
            std::future::ready(res)
        });
        Self {
            calls,
            taps,
            ranges,
            service,
        }
    }

    /// The `Range` of each call that had one, in order.
    pub fn ranges(&self) -> Vec<String> {
        self.ranges.lock().unwrap().clone()
    }

    /// The tap of the next origin call.
    pub async fn tap(&mut self) -> Tap {
        tokio::time::timeout(Duration::from_secs(20), self.taps.recv())
            .await
            .expect("an origin call")
            .expect("the origin is up")
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Headers of an answer kept a minute, with its length and a strong `ETag`.
pub fn cacheable(len: usize) -> Vec<(&'static str, String)> {
    with_tag(len, "\"v1\"")
}

/// Headers of an answer kept a minute, with its length and this `ETag`.
pub fn with_tag(len: usize, tag: &str) -> Vec<(&'static str, String)> {
    vec![
        ("cache-control", "max-age=60".into()),
        ("content-length", len.to_string()),
        ("etag", tag.into()),
    ]
}

/// The answer's bytes: every byte tells where it is.
pub fn answer(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Serves `origin` behind `layer` on a loopback port.
pub async fn serve(origin: &Origin, layer: &CoalesceLayer) -> SocketAddr {
    let app = origin.service.clone().layer(layer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

pub type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

pub fn client() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn request(
    client: &Http,
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> Response<hyper::body::Incoming> {
    let mut req = Request::get(format!("http://{addr}/report"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = client.request(req.body(Empty::new()).unwrap());
    tokio::time::timeout(Duration::from_secs(20), res)
        .await
        .expect("a head within 20 s")
        .expect("a response")
}

/// Reads `len` bytes of `res`'s body (more if a frame holds more).
pub async fn read_at_least(body: &mut hyper::body::Incoming, len: usize) -> Vec<u8> {
    let mut read = Vec::new();
    while read.len() < len {
        let frame = tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .expect("a frame within 20 s")
            .expect("more body")
            .expect("no error");
        if let Ok(data) = frame.into_data() {
            read.extend_from_slice(&data);
        }
    }
    read
}

/// The rest of `res`'s body; an error if it failed, a panic if it hangs.
pub async fn rest(res: Response<hyper::body::Incoming>) -> Result<Bytes, hyper::Error> {
    tokio::time::timeout(Duration::from_secs(30), res.into_body().collect())
        .await
        .expect("the body ends within 30 s")
        .map(|b| b.to_bytes())
}

/// How a streamed answer shared by two instances must end: B, which
/// waited on A's lease, has every byte of `expected` in order (`first`, the
/// bytes it read already, then the rest of `waiting`); A's caller has the
/// whole of `leading`; the origin was called once; both flights are over.
pub async fn both_ended_whole(
    origin: &Origin,
    (a, leading): (&CoalesceLayer, Response<hyper::body::Incoming>),
    (b, waiting): (&CoalesceLayer, Response<hyper::body::Incoming>),
    first: Vec<u8>,
    expected: &[u8],
) {
    let mut whole = first;
    whole.extend_from_slice(&rest(waiting).await.expect("B's body whole, not failed"));
    assert!(whole == expected, "B got every byte once, in order");
    assert!(rest(leading).await.unwrap() == expected);
    assert_eq!(origin.calls(), 1, "one origin call for both instances");
    super::until(a, "A's flight to end", |_| a.flights_in_progress() == 0).await;
    super::until(b, "B's flight to end", |_| b.flights_in_progress() == 0).await;
}

//! Helpers shared by the integration tests: a counting origin that holds its
//! answers until the test opens a gate, and small request/response helpers.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use coalesce_test_redis as redis;

#[cfg(feature = "body-keys")]
pub mod body;
#[cfg(feature = "redis")]
pub mod held;
pub mod tap;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tower_coalesce::{BoxError, CoalesceBody, CoalesceLayer, Stats};

/// Counts calls, and holds each answer until the gate opens.
#[derive(Clone)]
pub struct Origin {
    pub calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Origin {
    /// An origin whose gate is closed.
    pub fn gated() -> Self {
        Self {
            calls: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    /// An origin whose gate is open.
    pub fn open() -> Self {
        let o = Self::gated();
        o.open_gate();
        o
    }

    /// Lets `n` more calls through the gate.
    pub fn let_through(&self, n: usize) {
        self.gate.add_permits(n);
    }

    pub fn open_gate(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Counts the call, waits for the gate, then runs `answer`.
    pub fn serve<F, Fut, T>(
        &self,
        answer: F,
    ) -> impl tower::Service<
        Request<Full<Bytes>>,
        Response = T,
        Error = BoxError,
        Future = impl Future<Output = Result<T, BoxError>> + Send,
    > + Clone
           + Send
           + 'static
    where
        F: Fn(Request<Full<Bytes>>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<T, BoxError>> + Send + 'static,
        T: Send + 'static,
    {
        let me = self.clone();
        tower::service_fn(move |req: Request<Full<Bytes>>| {
            let me = me.clone();
            let answer = answer.clone();
            async move {
                me.calls.fetch_add(1, Ordering::SeqCst);
                // Each call uses up its permit: `let_through(n)` lets n calls by.
                me.gate.acquire().await.expect("gate closed").forget();
                answer(req).await
            }
        })
    }
}

/// A 200 response whose body is the request path.
pub async fn echo_path(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, BoxError> {
    Ok(Response::new(Full::new(Bytes::from(
        req.uri().path().to_owned(),
    ))))
}

/// Answers `Vary: Accept-Encoding`, with the `Accept-Encoding` it was asked
/// with as its body (`-` for none).
pub async fn by_encoding(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, BoxError> {
    let asked = req
        .headers()
        .get("accept-encoding")
        .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned());
    Ok(Response::builder()
        .header("vary", "Accept-Encoding")
        .body(Full::new(Bytes::from(asked)))
        .unwrap())
}

/// A `GET /page` with this `Accept-Encoding`, if any.
pub fn with_encoding(encoding: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = Request::get("/page");
    if let Some(encoding) = encoding {
        req = req.header("accept-encoding", encoding);
    }
    req.body(Full::new(Bytes::new())).unwrap()
}

pub fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::new(Bytes::new())).unwrap()
}

/// The whole body, or its error.
pub async fn body<B>(res: Response<CoalesceBody<B>>) -> Result<Bytes, BoxError>
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    Ok(res.into_body().collect().await?.to_bytes())
}

/// The response's `Age` in seconds, if it has one.
pub fn age<B>(res: &Response<B>) -> Option<u64> {
    let value = res.headers().get(http::header::AGE)?;
    Some(value.to_str().unwrap().parse().unwrap())
}

/// Waits (bounded) until the layer's counters satisfy `cond`.
pub async fn until<E>(layer: &CoalesceLayer<E>, what: &str, cond: impl Fn(&Stats) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond(&layer.stats()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            layer.stats()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Prints each layer's counters if the test panics while this is held:
/// all a failure on a machine that cannot be reached afterwards (CI) leaves
/// to read.
pub struct StatsOnPanic<'a>(pub &'a [CoalesceLayer]);

impl Drop for StatsOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (n, layer) in self.0.iter().enumerate() {
                eprintln!(
                    "layer {n}: {:?}, {} flights in progress",
                    layer.stats(),
                    layer.flights_in_progress()
                );
            }
        }
    }
}

/// A layered test service, boxed: what the instances of a test hold.
pub type Svc = tower::util::BoxCloneService<
    Request<Full<Bytes>>,
    Response<CoalesceBody<Full<Bytes>>>,
    BoxError,
>;

/// A service that is always ready and never fails, for type inference.
pub type Never = Infallible;

/// `first` leads `/overdue` (its origin call held by `origin`'s gate);
/// `second`, an instance whose wait on that lease times out with
/// `CallOrigin` (300 ms), gets 20 requests: its leader calls the origin and
/// its followers make one new flight, so at most 3 calls in all, not 21.
/// Every request is then answered.
pub async fn overdue_followers_make_one_flight(origin: &Origin, first: Svc, second: Svc) {
    use tower::ServiceExt;
    let leader = tokio::spawn(first.oneshot(get("/overdue")));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while origin.calls() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waiting: Vec<_> = (0..20)
        .map(|_| tokio::spawn(second.clone().oneshot(get("/overdue"))))
        .collect();
    // Past the wait timeout: the waiting instance's flight and its
    // followers' one new flight, two calls, not twenty.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(
        origin.calls() <= 3,
        "{} origin calls: the followers each called it",
        origin.calls()
    );
    origin.open_gate();
    for task in waiting {
        let res = task.await.unwrap().unwrap();
        assert_eq!(body(res).await.unwrap(), "/overdue");
    }
    let res = leader.await.unwrap().unwrap();
    assert_eq!(body(res).await.unwrap(), "/overdue");
}

/// Collects everything a `tracing_subscriber::fmt` subscriber writes (give
/// it `with_writer(captured.clone())`).
#[derive(Clone, Default)]
pub struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// What the tests' hand-written origins are: a cloneable service answering
/// `Full<Bytes>` requests, whose future can go to another thread.
pub trait OriginService:
    tower::Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<T> OriginService for T where
    T: tower::Service<
            Request<Full<Bytes>>,
            Response = Response<Full<Bytes>>,
            Error = BoxError,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

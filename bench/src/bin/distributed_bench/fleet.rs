//! The instances under test and what they are asked: a `CoalesceLayer` with
//! a `RedisBackend` of its own per instance, fresh namespaces, keys and
//! requests, the answers callers get, and the gated origin.

use crate::measure::unix_nanos;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower_coalesce::{CoalesceConfig, CoalesceLayer, HttpKey, KeyExtractor, Outcome, RedisBackend};

type Req = Request<Empty<Bytes>>;
pub(crate) async fn instance(
    url: &str,
    namespace: &str,
) -> Result<(CoalesceLayer, RedisBackend), String> {
    let backend = RedisBackend::builder(url)
        .namespace(namespace)
        .connect()
        .await
        .map_err(|e| format!("cannot use Redis at {url}: {e}"))?;
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .backend(backend.clone()),
    );
    Ok((layer, backend))
}

/// A namespace no earlier burst used, so that nothing stored answers it.
pub(crate) fn fresh_namespace(label: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "bench-{}-{}-{label}-{}",
        std::process::id(),
        unix_nanos() / 1_000_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn key(path: &str) -> tower_coalesce::Key {
    HttpKey::new()
        .extract(&request(path))
        .expect("a GET is keyed")
}

fn request(path: &str) -> Req {
    Request::get(path)
        .body(Empty::new())
        .expect("a valid request")
}

/// What a caller got, and when.
pub(crate) struct Answer {
    pub(crate) outcome: Option<Outcome>,
    /// A 200 whose body is the request's path.
    pub(crate) ok: bool,
    pub(crate) at: Instant,
    pub(crate) wall_ns: u128,
}

pub(crate) async fn ask<S, B>(svc: S, path: impl Into<String>) -> Answer
where
    S: tower::Service<Req, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes>,
{
    let path = path.into();
    let res = match svc.oneshot(request(&path)).await {
        Ok(res) => res,
        Err(never) => match never {},
    };
    // The caller has its response now: the time is taken before the body is
    // read, which for a coalesced answer is already in memory.
    let (at, wall_ns) = (Instant::now(), unix_nanos());
    let outcome = res.extensions().get::<Outcome>().copied();
    let status = res.status();
    let body = res.into_body().collect().await.ok().map(|b| b.to_bytes());
    Answer {
        outcome,
        ok: status == StatusCode::OK && body.as_deref() == Some(path.as_bytes()),
        at,
        wall_ns,
    }
}

/// The "database": counts its calls, holds its answers until its gate opens,
/// and notes when it returned, on this process's clock and on the wall clock
/// (which another process on the machine shares).
pub(crate) struct Origin {
    calls: AtomicUsize,
    gate: Semaphore,
    returned: Mutex<Option<(Instant, u128)>>,
}

impl Origin {
    pub(crate) fn gated() -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            gate: Semaphore::new(0),
            returned: Mutex::new(None),
        })
    }

    /// Lets every call through, now and later. Called once per origin.
    pub(crate) fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn returned(&self) -> Option<(Instant, u128)> {
        *self.returned.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn service(
        self: &Arc<Self>,
    ) -> impl tower::Service<
        Req,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
    > + Clone
           + Send
           + 'static {
        let me = self.clone();
        tower::service_fn(move |req: Req| {
            let me = me.clone();
            async move {
                me.calls.fetch_add(1, Ordering::SeqCst);
                let _permit = me.gate.acquire().await.expect("the gate is never closed");
                let res = Response::new(Full::new(Bytes::from(req.uri().path().to_owned())));
                // The last thing before returning: the wake-up is measured from here.
                *me.returned.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), unix_nanos()));
                Ok(res)
            }
        })
    }
}

/// Waits (bounded, 10 s) until `cond` holds.
pub(crate) async fn wait_for(cond: impl Fn() -> bool, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

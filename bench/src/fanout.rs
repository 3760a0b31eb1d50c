//! What `bench/benches/fanout.rs` and `bench/src/bin/fanout.rs` share: the round under
//! way, the gated origin, the contenders and the shape of a waiter's task.

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tower::{Layer, Service, ServiceExt};
use tower_coalesce::{CoalesceBody, CoalesceConfig, CoalesceLayer};

const BODY: &[u8] = b"{\"id\":7,\"name\":\"Espresso machine\",\"price_cents\":34900,\"stock\":12}";
pub const CONTENDERS: [&str; 5] = [
    "ours",
    "async_singleflight",
    "async_singleflight_http",
    "moka_get_with",
    "floor",
];

/// The state of the round under way. Rounds run one after another, so one
/// process-wide value serves them all, and a waiter's task captures nothing.
pub static ROUND: Round = Round::new();

/// The size of one waiter's future, as spawned.
pub static TASK_BYTES: AtomicUsize = AtomicUsize::new(0);

pub struct Round {
    waiters: AtomicUsize,
    pub entered: AtomicUsize,
    answered: AtomicUsize,
    pub wrong: AtomicUsize,
    pub origin_calls: AtomicUsize,
    returned: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
    pub gate: Notify,
    pub finished: Notify,
}

impl Round {
    const fn new() -> Self {
        Self {
            waiters: AtomicUsize::new(0),
            entered: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            wrong: AtomicUsize::new(0),
            origin_calls: AtomicUsize::new(0),
            returned: Mutex::new(None),
            last: Mutex::new(None),
            gate: Notify::const_new(),
            finished: Notify::const_new(),
        }
    }

    pub fn reset(&self, waiters: usize) {
        self.waiters.store(waiters, Ordering::SeqCst);
        self.entered.store(0, Ordering::SeqCst);
        self.answered.store(0, Ordering::SeqCst);
        self.wrong.store(0, Ordering::SeqCst);
        self.origin_calls.store(0, Ordering::SeqCst);
        *self.returned.lock().unwrap() = None;
        *self.last.lock().unwrap() = None;
    }

    /// Held until every waiter has joined.
    async fn held_at_gate(&self) {
        self.origin_calls.fetch_add(1, Ordering::SeqCst);
        self.gate.notified().await;
    }

    fn returns(&self) {
        *self.returned.lock().unwrap() = Some(Instant::now());
    }

    /// The origin of the peers and the floor: the value itself.
    async fn origin(&self) -> Bytes {
        self.held_at_gate().await;
        self.returns();
        Bytes::from_static(BODY)
    }

    /// The origin behind the layer: a response with a small body.
    async fn origin_response(&self) -> Result<Response<Full<Bytes>>, Infallible> {
        self.held_at_gate().await;
        let res = Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(BODY)))
            .unwrap();
        self.returns();
        Ok(res)
    }

    /// A waiter has its answer. Only the last one reads the clock, so the
    /// others pay one atomic add, not a clock read each.
    fn answer(&self, ok: bool) {
        if !ok {
            self.wrong.fetch_add(1, Ordering::Relaxed);
        }
        if self.answered.fetch_add(1, Ordering::AcqRel) + 1 == self.waiters.load(Ordering::Relaxed)
        {
            *self.last.lock().unwrap() = Some(Instant::now());
            self.finished.notify_one();
        }
    }

    pub fn fan_out(&self) -> Duration {
        let returned = self.returned.lock().unwrap().expect("the origin returned");
        let last = self.last.lock().unwrap().expect("every waiter answered");
        last.saturating_duration_since(returned)
    }
}

pin_project! {
    /// A waiter's future, counted as entered when first polled: by then it has
    /// started to join whatever it waits on.
    struct Enter<F> {
        #[pin]
        inner: F,
        entered: bool,
    }
}

impl<F> Enter<F> {
    fn new(inner: F) -> Self {
        Self {
            inner,
            entered: false,
        }
    }
}

impl<F: Future> Future for Enter<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if !*this.entered {
            *this.entered = true;
            ROUND.entered.fetch_add(1, Ordering::Relaxed);
        }
        this.inner.poll(cx)
    }
}

/// Spawns a waiter, noting the size of its future once.
fn spawn<F>(task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    TASK_BYTES.store(std::mem::size_of_val(&task), Ordering::Relaxed);
    tokio::spawn(task);
}

/// Reads a response body that is already in memory without allocating, so
/// the read adds nothing per waiter beyond what the body itself costs.
fn read_now<B: Body<Data = Bytes> + Unpin>(mut body: B) -> Option<Bytes> {
    let mut data = None;
    loop {
        match body.frame().now_or_never()? {
            None => return data,
            Some(Ok(frame)) => {
                if let Ok(chunk) = frame.into_data() {
                    if data.replace(chunk).is_some() {
                        return None;
                    }
                }
            }
            Some(Err(_)) => return None,
        }
    }
}

pub trait Contender: Sync {
    /// Labels results and failures.
    fn name(&self) -> &'static str;
    /// Spawns the round's waiters (from inside the runtime).
    fn spawn(&'static self, waiters: usize);
    /// Whether every waiter has joined, as far as the contender can tell.
    fn joined(&self, waiters: usize) -> bool;
    /// Clears what a round left behind; not measured.
    fn after(&self, _rt: &Runtime) {}
}

pub fn contender(name: &str) -> &'static dyn Contender {
    match name {
        "ours" => {
            let layer = CoalesceLayer::new(CoalesceConfig::new());
            let svc = layer.layer(tower::service_fn(|_req: Request<Empty<Bytes>>| {
                ROUND.origin_response()
            }));
            Box::leak(Box::new(Ours {
                layer,
                svc,
                followers_before: AtomicU64::new(0),
            }))
        }
        "async_singleflight" => Box::leak(Box::new(Singleflight {
            group: async_singleflight::DefaultGroup::new(),
        })),
        "async_singleflight_http" => Box::leak(Box::new(SingleflightHttp {
            group: async_singleflight::DefaultGroup::new(),
        })),
        "moka_get_with" => Box::leak(Box::new(Moka {
            cache: moka::future::Cache::new(16),
            key: AtomicU64::new(0),
        })),
        "floor" => Box::leak(Box::new(Floor {
            notify: Arc::new(Notify::new()),
        })),
        other => unreachable!("no contender {other}"),
    }
}

struct Ours<S> {
    layer: CoalesceLayer,
    svc: S,
    followers_before: AtomicU64,
}

impl<S> Contender for Ours<S>
where
    S: Service<
            Request<Empty<Bytes>>,
            Response = Response<CoalesceBody<Full<Bytes>>>,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    fn name(&self) -> &'static str {
        "ours"
    }

    fn spawn(&'static self, waiters: usize) {
        self.followers_before
            .store(self.layer.stats().followers, Ordering::SeqCst);
        for _ in 0..waiters {
            let req = product_request();
            spawn(Enter::new(self.svc.clone().oneshot(req)).map(|res| {
                let ok = res.is_ok_and(|res| {
                    res.status() == StatusCode::OK
                        && read_now(res.into_body()).is_some_and(|b| b == BODY)
                });
                ROUND.answer(ok)
            }));
        }
    }

    fn joined(&self, waiters: usize) -> bool {
        let followers = self.layer.stats().followers - self.followers_before.load(Ordering::SeqCst);
        followers == waiters as u64 - 1
    }
}

struct Singleflight {
    group: async_singleflight::DefaultGroup<Bytes, Infallible>,
}

impl Contender for Singleflight {
    fn name(&self) -> &'static str {
        "async_singleflight"
    }

    fn spawn(&'static self, waiters: usize) {
        for _ in 0..waiters {
            let work = self
                .group
                .work("/products/7", ROUND.origin().map(Ok::<_, Infallible>));
            spawn(Enter::new(work).map(|res| ROUND.answer(res.is_ok_and(|b| b == BODY))));
        }
    }

    fn joined(&self, waiters: usize) -> bool {
        ROUND.entered.load(Ordering::SeqCst) == waiters
    }
}

/// The request every waiter of the HTTP contenders holds while it waits,
/// as a service's caller does.
fn product_request() -> Request<Empty<Bytes>> {
    Request::get("http://api.example/products/7")
        .header("accept", "application/json")
        .body(Empty::new())
        .unwrap()
}

/// The origin's answer as `async_singleflight` hands it to each waiter: a
/// clone of one `Arc`.
type SharedAnswer = Arc<(StatusCode, http::HeaderMap, Bytes)>;

/// An HTTP single-flight built on `async_singleflight`, doing for each
/// waiter what an HTTP answer takes whoever makes it, and nothing else:
/// the waiter holds its request until answered, and gets a response of its
/// own (the head's headers cloned, the body shared) marked with an
/// extension, as `ours` marks its `Outcome`. The floor for `ours` with
/// `http` types; `async_singleflight` hands out a value, not a response.
struct SingleflightHttp {
    group: async_singleflight::DefaultGroup<SharedAnswer, Infallible>,
}

impl SingleflightHttp {
    async fn origin() -> Result<SharedAnswer, Infallible> {
        let (head, body) = ROUND.origin_response().await?.into_parts();
        let body = read_now(body).unwrap_or_default();
        Ok(Arc::new((head.status, head.headers, body)))
    }
}

impl Contender for SingleflightHttp {
    fn name(&self) -> &'static str {
        "async_singleflight_http"
    }

    fn spawn(&'static self, waiters: usize) {
        for _ in 0..waiters {
            let req = product_request();
            let work = self.group.work("/products/7", Self::origin());
            spawn(Enter::new(work).map(move |answer| {
                let res = answer.ok().map(|answer| {
                    let (status, headers, body) = &*answer;
                    let mut res = Response::new(Full::new(body.clone()));
                    *res.status_mut() = *status;
                    *res.headers_mut() = headers.clone();
                    res.extensions_mut()
                        .insert(tower_coalesce::Outcome::Follower);
                    res
                });
                let ok = res.is_some_and(|res| {
                    res.status() == StatusCode::OK
                        && read_now(res.into_body()).is_some_and(|b| b == BODY)
                });
                drop(req);
                ROUND.answer(ok)
            }));
        }
    }

    fn joined(&self, waiters: usize) -> bool {
        ROUND.entered.load(Ordering::SeqCst) == waiters
    }
}

struct Moka {
    cache: moka::future::Cache<u64, Bytes>,
    /// A fresh key per round: a round must never find the last one's value.
    key: AtomicU64,
}

impl Contender for Moka {
    fn name(&self) -> &'static str {
        "moka_get_with"
    }

    fn spawn(&'static self, waiters: usize) {
        let key = self.key.fetch_add(1, Ordering::SeqCst) + 1;
        for _ in 0..waiters {
            spawn(
                Enter::new(self.cache.get_with(key, ROUND.origin()))
                    .map(|value| ROUND.answer(value == BODY)),
            );
        }
    }

    fn joined(&self, waiters: usize) -> bool {
        ROUND.entered.load(Ordering::SeqCst) == waiters
    }

    fn after(&self, rt: &Runtime) {
        let key = self.key.load(Ordering::SeqCst);
        rt.block_on(async {
            self.cache.invalidate(&key).await;
            self.cache.run_pending_tasks().await;
        });
    }
}

struct Floor {
    notify: Arc<Notify>,
}

impl Contender for Floor {
    fn name(&self) -> &'static str {
        "floor"
    }

    fn spawn(&'static self, waiters: usize) {
        tokio::spawn(async move {
            ROUND.origin().await;
            self.notify.notify_waiters();
        });
        for _ in 0..waiters {
            spawn(Enter::new(self.notify.clone().notified_owned()).map(|()| ROUND.answer(true)));
        }
    }

    fn joined(&self, waiters: usize) -> bool {
        ROUND.entered.load(Ordering::SeqCst) == waiters
    }
}

/// Waits on a condition checked from outside the runtime, so waiting never
/// occupies a worker; gives up after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "still waiting for {what}");
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// No task queued and every worker parked, seen three times in a row: the
/// waiters have all registered and gone to sleep.
pub fn wait_idle(rt: &Runtime, limit: Duration) {
    let metrics = rt.metrics();
    let idle = || {
        metrics.global_queue_depth() == 0
            && (0..metrics.num_workers()).all(|w| metrics.worker_park_unpark_count(w) % 2 == 1)
    };
    let mut seen = 0;
    wait_until("idle workers", limit, || {
        seen = if idle() { seen + 1 } else { 0 };
        seen >= 3
    });
}

/// One round: N waiters, one origin call, every answer checked; gives up on
/// any wait after `limit`. Returns the fan-out time (origin return → last
/// answer) and the set-up time (first spawn → every waiter joined).
pub fn round(
    rt: &Runtime,
    contender: &'static dyn Contender,
    waiters: usize,
    limit: Duration,
) -> (Duration, Duration) {
    ROUND.reset(waiters);
    let start = Instant::now();
    rt.spawn(async move { contender.spawn(waiters) });
    wait_until("every waiter to join", limit, || {
        ROUND.entered.load(Ordering::SeqCst) == waiters && contender.joined(waiters)
    });
    let set_up = start.elapsed();
    wait_idle(rt, limit);
    ROUND.gate.notify_one();
    rt.block_on(ROUND.finished.notified());
    let fan_out = ROUND.fan_out();
    wait_until("every task to end", limit, || {
        rt.metrics().num_alive_tasks() == 0
    });
    contender.after(rt);
    let name = contender.name();
    assert_eq!(
        ROUND.origin_calls.load(Ordering::SeqCst),
        1,
        "{name}: one origin call"
    );
    assert_eq!(
        ROUND.wrong.load(Ordering::SeqCst),
        0,
        "{name}: every answer right"
    );
    (fan_out, set_up)
}

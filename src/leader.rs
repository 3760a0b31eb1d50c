//! The leader's task: one per flight. It asks the backend, calls the inner
//! service, buffers the body within the limit, judges the response, stores
//! it, and lands the flight.
//!
//! It runs detached from the caller that started it, so a caller that goes
//! away never fails the followers. It must land or drop its [`FlightGuard`]
//! on every path — answer, error, panic, cancellation — so no follower waits
//! on a flight nobody will finish.

use crate::backend::Completion;
use crate::conditions::Asked;
use crate::flight::{FlightGuard, Landing};
use crate::layer::Shared;
use crate::policy::{self, Sharing};
use crate::remote::Elected;
use crate::stats::bump;
use crate::{
    BoxError, CoalesceBody, Entry, FlightError, FlightErrorKind, Key, KeyExtractor, Outcome,
    WaitFallback,
};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use std::fmt::Display;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::oneshot;
use tower::ServiceExt;
use tower_service::Service;
use tracing::Instrument;

/// The inner services the flight machinery can drive: what a flight's task
/// needs of the service, its future and its bodies, said once.
pub(crate) trait Origin<ReqBody, ResBody>:
    Service<
        Request<ReqBody>,
        Response = Response<ResBody>,
        Future: Send + 'static,
        Error: Display + Send + 'static,
    > + Send
    + 'static
{
}

impl<S, ReqBody, ResBody> Origin<ReqBody, ResBody> for S
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Display + Send + 'static,
{
}

/// The response bodies a flight can buffer, replay and hand across tasks.
pub(crate) trait OriginBody:
    Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> OriginBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

/// What the leader's own caller receives: its response (with how it was
/// made), or the inner service's own error.
pub(crate) type Own<B, E> = Result<(Response<CoalesceBody<B>>, Outcome), E>;

/// A fresh entry held in this process's memory, if caching is on.
pub(crate) fn local_hit<E>(shared: &Shared<E>, key: &Key) -> Option<Entry> {
    if !shared.config.stores() {
        return None;
    }
    let entry = shared.config.backend.get_local(key)?;
    bump(&shared.counters.hits);
    Some(entry)
}

/// Starts the flight's task; the receiver gets the leader caller's answer.
pub(crate) fn spawn<S, E, ReqBody, ResBody>(
    shared: Arc<Shared<E>>,
    guard: FlightGuard,
    key: Key,
    mut req: Request<ReqBody>,
    inner: S,
) -> oneshot::Receiver<Own<ResBody, S::Error>>
where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    bump(&shared.counters.flights);
    let (own_tx, own_rx) = oneshot::channel();
    // The flight's span: every event of the flight (origin answer, backend
    // trouble, takeover, timeout) carries the key's fingerprint.
    let span = tracing::debug_span!("coalesce.flight", key = %key.fingerprint());
    // The flight asks for the whole representation, for every caller; the
    // leader's caller gets its own conditions applied like the others.
    let asked = Asked::take(&mut req);
    // Tells the inner service that its answer may be shared: it must not
    // depend on anything of this caller's that is not in the key.
    req.extensions_mut().insert(Outcome::Leader);
    tokio::spawn(run(shared, guard, key, asked, req, inner, own_tx).instrument(span));
    own_rx
}

async fn run<S, E, ReqBody, ResBody>(
    shared: Arc<Shared<E>>,
    guard: FlightGuard,
    key: Key,
    asked: Asked,
    req: Request<ReqBody>,
    inner: S,
    mut own_tx: oneshot::Sender<Own<ResBody, S::Error>>,
) where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ResBody: OriginBody,
{
    let config = &shared.config;
    let grpc = is_grpc(&req);
    // One deadline for the whole flight, not a timer per follower: a burst of
    // a million followers costs one timer, and no follower waits longer than
    // `wait_timeout` whenever it joined.
    let deadline = tokio::time::Instant::now() + config.wait_timeout;
    let work = AssertUnwindSafe(fly(&shared, &key, deadline, &asked, req, inner)).catch_unwind();
    let mut work = std::pin::pin!(work);
    let expiry = tokio::time::sleep_until(deadline);
    let mut expiry = std::pin::pin!(expiry);
    let mut guard = Some(guard);
    let timed_out = || {
        FlightError::new(
            FlightErrorKind::WaitTimeout,
            format!("no answer within {:?}", config.wait_timeout),
        )
    };
    let finished = loop {
        tokio::select! {
            biased;
            finished = &mut work => break Some(finished),
            () = &mut expiry, if guard.is_some() => {
                bump(&shared.counters.wait_timeouts);
                match config.wait_fallback {
                    WaitFallback::GatewayTimeout => {
                        tracing::warn!(key = %key.fingerprint(), "flight timed out; its callers get 504");
                        break None;
                    }
                    WaitFallback::CallOrigin => {
                        // The followers go to the origin on their own; this
                        // call goes on for its own caller.
                        tracing::warn!(key = %key.fingerprint(), "flight timed out; its followers call the origin");
                        if let Some(guard) = guard.take() {
                            guard.land(Landing::Failed(timed_out()));
                        }
                    }
                }
            }
            () = async {
                if let Some(guard) = &guard {
                    guard.followers_gone().await;
                }
                own_tx.closed().await;
            }, if !config.complete_abandoned => {
                if guard.as_ref().is_none_or(FlightGuard::abandon_if_unfollowed) {
                    bump(&shared.counters.cancelled);
                    tracing::debug!(key = %key.fingerprint(), "every caller left; flight cancelled");
                    return;
                }
            }
        }
    };
    let (landing, own) = match finished {
        Some(Ok(Flown::Landed(landing, own))) => (landing, own),
        Some(Ok(Flown::Pass(req, inner))) => {
            // The followers go to the origin at once, in parallel with this
            // caller's own call.
            if let Some(guard) = guard {
                guard.land(Landing::Uncacheable);
            }
            let own = match AssertUnwindSafe(inner.oneshot(req)).catch_unwind().await {
                Ok(own) => own.map(|res| (res.map(CoalesceBody::inner), Outcome::Pass)),
                Err(panic) => {
                    bump(&shared.counters.panics);
                    let message = crate::error::panic_message(&*panic);
                    let error = FlightError::new(FlightErrorKind::Panic, message);
                    Ok((error_response(error, grpc), Outcome::Pass))
                }
            };
            let _ = own_tx.send(own);
            return;
        }
        Some(Err(panic)) => {
            bump(&shared.counters.errors);
            bump(&shared.counters.panics);
            let message = crate::error::panic_message(&*panic);
            tracing::error!(key = %key.fingerprint(), panic = %message, "inner service panicked; the flight's callers get 500");
            let error = FlightError::new(FlightErrorKind::Panic, message);
            let own = Ok((error_response(error.clone(), grpc), Outcome::Leader));
            (Landing::Failed(error), own)
        }
        None => {
            let error = timed_out();
            let own = Ok((error_response(error.clone(), grpc), Outcome::Leader));
            (Landing::Failed(error), own)
        }
    };
    if let Some(guard) = guard {
        guard.land(landing);
    }
    let _ = own_tx.send(own);
}

/// How a flight's work ended.
enum Flown<S, ReqBody, B, E> {
    /// Land this for the followers; answer the leader's caller with that.
    Landed(Landing, Own<B, E>),
    /// The key's answers cannot be shared: the followers go to the origin
    /// themselves, and so does the leader's caller, with this request (as
    /// it sent it) and service.
    Pass(Request<ReqBody>, S),
}

/// The flight itself: backend, origin, body, policy, store.
async fn fly<S, E, ReqBody, ResBody>(
    shared: &Shared<E>,
    key: &Key,
    deadline: tokio::time::Instant,
    asked: &Asked,
    mut req: Request<ReqBody>,
    inner: S,
) -> Flown<S, ReqBody, ResBody, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ResBody: OriginBody,
{
    let config = &shared.config;
    let counters = &shared.counters;
    if config.stores() {
        match optional(shared, |backend| backend.lookup(key)).await {
            Ok(Some(entry)) => {
                bump(&counters.hits);
                let res = asked.answer(&entry);
                return Flown::Landed(Landing::Done(entry), Ok((res, Outcome::Hit)));
            }
            Ok(None) => {}
            Err(unavailable) => {
                unavailable.report(counters, "backend lookup", "calling the origin")
            }
        }
    }

    let lease = if !config.stores() {
        // Nothing is stored, so nothing could be handed to another process.
        None
    } else {
        match crate::remote::elect(shared, key, deadline).await {
            Elected::Lead(lease) => lease,
            Elected::Answer(entry) | Elected::Shared(entry) => {
                let res = asked.answer(&entry);
                return Flown::Landed(Landing::Done(entry), Ok((res, Outcome::Follower)));
            }
            Elected::Pass => {
                tracing::debug!("another instance found the answer private; calling the origin");
                if let Some(passes) = &shared.passes {
                    passes.insert(key);
                }
                bump(&counters.passes);
                bump(&counters.origin_calls);
                asked.restore(&mut req);
                req.extensions_mut().insert(Outcome::Pass);
                return Flown::Pass(req, inner);
            }
            Elected::Timeout => match config.wait_fallback {
                WaitFallback::CallOrigin => None,
                WaitFallback::GatewayTimeout => {
                    bump(&counters.wait_timeouts);
                    let error = FlightError::new(
                        FlightErrorKind::WaitTimeout,
                        format!(
                            "no answer from another instance within {:?}",
                            config.wait_timeout
                        ),
                    );
                    let own = Ok((
                        error_response(error.clone(), is_grpc(&req)),
                        Outcome::Leader,
                    ));
                    return Flown::Landed(Landing::Failed(error), own);
                }
            },
        }
    };

    let held = lease
        .as_ref()
        .map(|token| crate::remote::Held::new(shared, key, token));
    let produced = produce(shared, asked, req, inner);
    let (Produced { landing, own, keep }, lost) = match &lease {
        Some(lease) => crate::remote::with_watchdog(shared, key, lease, produced).await,
        None => (produced.await, false),
    };
    if matches!(landing, Landing::Uncacheable) {
        if let Some(passes) = &shared.passes {
            passes.insert(key);
        }
    }
    // Marked as stored now: answers later made from it carry their `Age`.
    let keep = keep
        .filter(|_| config.stores())
        .map(|entry| entry.stored(std::time::SystemTime::now()));
    match lease {
        Some(lease) => {
            let completion = match (keep, &landing) {
                (Some(entry), _) => Completion::Stored {
                    entry,
                    ttl: config.ttl,
                },
                (None, Landing::Done(entry)) => Completion::Shared(entry.clone()),
                // The leader's values of headers outside the key decided
                // it: other instances' callers may differ in them.
                (None, Landing::Varied(..)) => Completion::Pass {
                    ttl: std::time::Duration::ZERO,
                },
                (None, Landing::Uncacheable) => Completion::Pass {
                    ttl: config.pass_ttl,
                },
                (None, Landing::Failed(_)) => Completion::Released,
            };
            crate::remote::complete(shared, key, &lease, completion, lost).await;
            if let Some(held) = held {
                held.disarm();
            }
        }
        None => {
            if let Some(entry) = keep {
                match optional(shared, |backend| backend.store(key, entry, config.ttl)).await {
                    Ok(()) => bump(&counters.stored),
                    Err(unavailable) => unavailable.report(
                        counters,
                        "backend store",
                        "the answer is shared but not kept",
                    ),
                }
            }
        }
    }
    Flown::Landed(landing, own)
}

/// What the origin call produced: the landing for the followers, the leader
/// caller's own answer, and the entry to keep, if it may be stored.
struct Produced<B, E> {
    landing: Landing,
    own: Own<B, E>,
    keep: Option<Entry>,
}

/// Calls the origin, judges the response and buffers its body.
async fn produce<S, E, ReqBody, ResBody>(
    shared: &Shared<E>,
    asked: &Asked,
    req: Request<ReqBody>,
    inner: S,
) -> Produced<ResBody, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ResBody: OriginBody,
{
    let counters = &shared.counters;
    bump(&counters.origin_calls);
    // Kept for a response that varies on headers outside the key: followers
    // then share it only if their values are the leader's. Header values are
    // reference-counted, so this costs one small map per flight.
    let sent = req.headers().clone();
    let res = match inner.oneshot(req).await {
        Ok(res) => res,
        Err(error) => {
            bump(&counters.errors);
            let shared_error = FlightError::new(FlightErrorKind::Origin, error.to_string());
            return Produced {
                landing: Landing::Failed(shared_error),
                own: Err(error),
                keep: None,
            };
        }
    };
    let (head, body) = res.into_parts();
    let mut sharing = policy::judge(&head);
    tracing::debug!(status = %head.status, ?sharing, "origin answered");
    let varied = policy::varied_on(&head.headers)
        .filter(|name| !shared.extractor.keys_header(name))
        .map(|name| {
            let values = sent.get_all(&name).iter().cloned().collect();
            (name, values)
        })
        .collect::<Vec<_>>();
    if !varied.is_empty() && sharing == Sharing::Store {
        // Later requests may differ in those headers, and nothing stored
        // would tell: the flight shares it, the store does not keep it.
        sharing = Sharing::FlightOnly;
    }
    if sharing == Sharing::Private {
        bump(&counters.uncacheable);
        let own = asked.answer_streamed(head, CoalesceBody::inner(body));
        return Produced {
            landing: Landing::Uncacheable,
            own: Ok((own, Outcome::Leader)),
            keep: None,
        };
    }

    match buffer(body, shared.config.max_body_bytes).await {
        Buffered::Whole { data, trailers } => {
            let sharing = policy::judge_trailers(sharing, trailers.as_ref());
            let entry = Entry::new(head.status, head.version, head.headers, data, trailers);
            let own = asked.answer(&entry);
            let keep = (sharing == Sharing::Store).then(|| entry.clone());
            let landing = if varied.is_empty() {
                Landing::Done(entry)
            } else {
                Landing::Varied(entry, Arc::new(crate::flight::Varied::new(varied)))
            };
            Produced {
                keep,
                landing,
                own: Ok((own, Outcome::Leader)),
            }
        }
        Buffered::TooLarge { prefix, rest } => {
            bump(&counters.uncacheable);
            let own = asked.answer_streamed(head, CoalesceBody::replay(prefix, Some(rest), None));
            Produced {
                landing: Landing::Uncacheable,
                own: Ok((own, Outcome::Leader)),
                keep: None,
            }
        }
        Buffered::Failed { prefix, error } => {
            bump(&counters.errors);
            let shared_error = FlightError::new(FlightErrorKind::Body, error.to_string());
            let own = Response::from_parts(head, CoalesceBody::replay(prefix, None, Some(error)));
            Produced {
                landing: Landing::Failed(shared_error),
                own: Ok((own, Outcome::Leader)),
                keep: None,
            }
        }
    }
}

/// A backend operation, given up after `limit`.
/// Why a flight goes without the backend for one operation.
pub(crate) enum Unavailable {
    /// Not tried: the backend kept failing (see `backend_cooldown`).
    Skipped,
    /// Tried, and it failed or did not answer in time.
    Failed(crate::BackendError),
}

impl Unavailable {
    /// Counts this, and says what the flight does instead: `what` failed,
    /// or was skipped; `then` the flight goes on this way.
    pub(crate) fn report(&self, counters: &crate::stats::Counters, what: &str, then: &str) {
        match self {
            Unavailable::Skipped => {
                bump(&counters.backend_skipped);
                tracing::debug!("{what} skipped, the backend keeps failing; {then}");
            }
            Unavailable::Failed(error) => {
                bump(&counters.backend_errors);
                tracing::warn!(%error, "{what} failed; {then}");
            }
        }
    }
}

/// A backend operation a flight can go without: not tried while the backend
/// is being skipped, otherwise bounded by `backend_timeout`; its outcome
/// counts toward skipping the backend.
pub(crate) async fn optional<'a, E, T>(
    shared: &'a Shared<E>,
    op: impl FnOnce(&'a dyn crate::Backend) -> crate::backend::BackendFuture<'a, T>,
) -> Result<T, Unavailable> {
    if shared.breaker.skipping() {
        return Err(Unavailable::Skipped);
    }
    required(shared, op).await.map_err(Unavailable::Failed)
}

/// A backend operation a flight must try whatever the backend did before
/// (renewing or completing a lease it holds): bounded by `backend_timeout`,
/// its outcome counted toward skipping the backend.
pub(crate) async fn required<'a, E, T>(
    shared: &'a Shared<E>,
    op: impl FnOnce(&'a dyn crate::Backend) -> crate::backend::BackendFuture<'a, T>,
) -> Result<T, crate::BackendError> {
    let config = &shared.config;
    let result = bounded(config.backend_timeout, op(&*config.backend)).await;
    shared.breaker.record(&result);
    result
}

pub(crate) async fn bounded<T>(
    limit: std::time::Duration,
    op: crate::backend::BackendFuture<'_, T>,
) -> Result<T, crate::BackendError> {
    match tokio::time::timeout(limit, op).await {
        Ok(result) => result,
        Err(_) => Err(crate::BackendError::msg(format!(
            "no answer from the backend within {limit:?}"
        ))),
    }
}

/// A response body read as far as the limit allows.
enum Buffered<B> {
    /// All of it, within the limit.
    Whole {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// More than the limit: what was read, and the unread rest.
    TooLarge {
        prefix: Vec<Bytes>,
        rest: Pin<Box<B>>,
    },
    /// The body failed after `prefix`.
    Failed { prefix: Vec<Bytes>, error: BoxError },
}

async fn buffer<B>(body: B, limit: usize) -> Buffered<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    // Boxed once per flight so the unread rest can be handed on after reading.
    let mut body = Box::pin(body);
    let mut prefix = Vec::new();
    if body.size_hint().lower() > limit as u64 {
        return Buffered::TooLarge { prefix, rest: body };
    }
    let mut len = 0usize;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                return Buffered::Failed {
                    prefix,
                    error: error.into(),
                }
            }
        };
        match frame.into_data() {
            Ok(chunk) => {
                len = len.saturating_add(chunk.len());
                if !chunk.is_empty() {
                    prefix.push(chunk);
                }
                if len > limit {
                    return Buffered::TooLarge { prefix, rest: body };
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    let data = match prefix.len() {
        0 => Bytes::new(),
        1 => prefix.pop().unwrap_or_default(),
        _ => {
            let mut joined = BytesMut::with_capacity(len);
            prefix.iter().for_each(|c| joined.extend_from_slice(c));
            joined.freeze()
        }
    };
    Buffered::Whole { data, trailers }
}

/// Whether a request speaks gRPC, whose clients read failures from
/// `grpc-status`, not from the HTTP status.
pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The response a caller gets for a flight that failed: the error's HTTP
/// status, or for a gRPC caller a trailers-only gRPC answer with the matching
/// status code, so its client reports what happened instead of a protocol
/// error.
pub(crate) fn error_response<B>(error: FlightError, grpc: bool) -> Response<CoalesceBody<B>> {
    let mut res = Response::new(CoalesceBody::empty());
    if grpc {
        let headers = res.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", error.grpc_status().into());
        if let Ok(message) = http::HeaderValue::from_str(&grpc_message(&error.to_string())) {
            headers.insert("grpc-message", message);
        }
    } else {
        *res.status_mut() = error.status();
    }
    res.extensions_mut().insert(error);
    res
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 protocol asks: every
/// byte outside printable ASCII, and `%` itself.
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

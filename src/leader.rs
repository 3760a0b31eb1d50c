//! The leader's task: one per flight. It runs the flight's work (`fly.rs`:
//! backend, lease, origin, store) within the flight's deadline, answers the
//! leader's own caller, and lands the flight for its followers.
//!
//! It runs detached from the caller that started it, so a caller that goes
//! away never fails the followers. It must land or drop its [`FlightGuard`]
//! on every path — answer, error, panic, cancellation — so no follower waits
//! on a flight nobody will finish.

use crate::conditions::Asked;
use crate::error::is_grpc;
use crate::flight::{FlightGuard, Landing};
use crate::fly::{fly, Brief, Flown};
use crate::origin::{Origin, OriginBody, Own};
use crate::shared::Shared;
use crate::stats::bump;
use crate::{Entry, FlightError, FlightErrorKind, Key, KeyExtractor, Outcome, WaitFallback};
use futures_util::FutureExt;
use http::Request;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::oneshot;
use tower::ServiceExt;
use tracing::Instrument;

/// An entry held in this process's memory, if caching is on: fresh, or
/// [stale](Entry::is_stale) within its window. Not counted: the caller
/// counts a hit or a stale answer.
///
/// When the key's answers vary (this process knows their index), `key`
/// becomes the key of the variant `headers` select: the one its flight, if
/// any, is for.
pub(crate) fn local_hit<E>(
    shared: &Shared<E>,
    key: &mut Key,
    headers: &http::HeaderMap,
) -> Option<Entry> {
    if !shared.config.stores() || key.is_flight_only() {
        return None;
    }
    let backend = &shared.config.backend;
    match backend.find_local(key)? {
        crate::Found::Entry(entry) => Some(entry),
        crate::Found::Variants(variants) if key.variants().is_none() => {
            *key = crate::flight::Varied::of(variants, headers).key(key);
            backend.get_local(key)
        }
        crate::Found::Variants(_) => None,
    }
}

/// The key of the variant a request with `headers` selects, when this
/// process knows `key`'s answers to vary; `key` otherwise.
pub(crate) fn variant_of<E>(shared: &Shared<E>, key: Key, headers: &http::HeaderMap) -> Key {
    if !shared.config.stores() || key.variants().is_some() || key.is_flight_only() {
        return key;
    }
    match shared.config.backend.find_local(&key) {
        Some(crate::Found::Variants(variants)) => {
            crate::flight::Varied::of(variants, headers).key(&key)
        }
        _ => key,
    }
}

/// Marks the request of a flight led by a follower of one that timed out
/// with [`WaitFallback::CallOrigin`]: it goes to the origin without waiting
/// on another process's lease, and is not timed out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Overdue;

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
    let (tx, own_rx) = oneshot::channel();
    // The flight's span: every event of the flight (origin answer, backend
    // trouble, takeover, timeout) carries the key's fingerprint, and the
    // followers' spans follow from it.
    let span = crate::trace::flight(&key);
    guard.trace(&span);
    let caller = Caller {
        tx,
        span: span.clone(),
    };
    let asked = for_the_flight(&mut req);
    let flight = run(shared.clone(), guard, key, asked, req, inner, caller);
    shared.tasks.spawn(flight.instrument(span));
    own_rx
}

/// Where the leader's own caller gets its answer; the flight's span
/// records how it was answered.
struct Caller<B, Err> {
    tx: oneshot::Sender<Own<B, Err>>,
    span: tracing::Span,
}

impl<B, Err> Caller<B, Err> {
    fn answer(self, own: Own<B, Err>) {
        if let Ok((_, outcome)) = &own {
            crate::trace::role(&self.span, *outcome);
        }
        let _ = self.tx.send(own);
    }
}

/// Makes a caller's request the flight's: it asks for the whole
/// representation, for every caller (the caller gets its own conditions
/// applied to the answer, from what this returns), and is marked as a
/// request whose answer may be shared, so it must not depend on anything of
/// this caller's that is not in the key.
pub(crate) fn for_the_flight<B>(req: &mut Request<B>) -> Asked {
    let asked = Asked::take(req);
    req.extensions_mut().insert(Outcome::Leader);
    asked
}

async fn run<S, E, ReqBody, ResBody>(
    shared: Arc<Shared<E>>,
    guard: FlightGuard,
    key: Key,
    asked: Asked,
    mut req: Request<ReqBody>,
    inner: S,
    mut caller: Caller<ResBody, S::Error>,
) where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let config = &shared.config;
    let grpc = is_grpc(&req);
    let overdue = req.extensions_mut().remove::<Overdue>().is_some();
    // One deadline for the whole flight, not a timer per follower: a burst of
    // a million followers costs one timer, and no follower waits longer than
    // `wait_timeout` whenever it joined.
    let deadline = tokio::time::Instant::now() + config.wait_timeout;
    // Where the work leaves a stale answer that may stand in for an error,
    // so that a timeout can use it too.
    let fallback = std::sync::OnceLock::new();
    let only = guard.only();
    let brief = Brief {
        deadline,
        refresh: None,
        fallback: &fallback,
        overdue,
        only: &only,
    };
    let work = fly(&shared, &key, &asked, req, inner, brief);
    let work = AssertUnwindSafe(work).catch_unwind();
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
            () = &mut expiry, if guard.is_some() && !overdue => {
                bump(&shared.counters.wait_timeouts);
                let stale = fallback.get().filter(|stale| stale.may_serve_on_error());
                if let Some((stale, guard)) = stale.and_then(|stale| Some((stale, guard.take()?))) {
                    tracing::warn!(key = %key.fingerprint(), "flight timed out; its callers get the stale answer");
                    guard.land(crate::fly::rescue(&shared, stale, None));
                    if config.wait_fallback == WaitFallback::GatewayTimeout {
                        // The inner call is dropped, as with a 504.
                        let own = crate::fly::rescued_answer(&shared, &asked, stale, None);
                        caller.answer(Ok((own, Outcome::Stale)));
                        return;
                    }
                    continue;
                }
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
                caller.tx.closed().await;
            }, if !config.complete_abandoned => {
                if guard.as_ref().is_none_or(FlightGuard::abandon_if_unfollowed) {
                    bump(&shared.counters.cancelled);
                    tracing::debug!(key = %key.fingerprint(), "every caller left; flight cancelled");
                    return;
                }
            }
            () = shared.tasks.stopping() => {
                // The layer is shutting down and the grace is over: the
                // flight's work (and the lease it holds) is dropped here.
                tracing::warn!(key = %key.fingerprint(), "layer shut down; flight stopped unfinished");
                let error = FlightError::new(FlightErrorKind::Dropped, "the layer was shut down");
                if let Some(guard) = guard.take() {
                    guard.land(Landing::Failed(error.clone()));
                }
                caller.answer(Ok((error.into_response(grpc), Outcome::Leader)));
                return;
            }
        }
    };
    let (landing, own) = match finished {
        Some(Ok(Flown::Landed(landing, own))) => (landing, own),
        Some(Ok(Flown::Streaming(streaming, own))) => {
            // Every caller reads the answer as it arrives; the flight stays
            // in the table meanwhile, so that callers that come now join it.
            if let Some(guard) = &guard {
                guard.stream(streaming.landing());
            }
            caller.answer(own);
            let close = || {
                if let Some(guard) = &guard {
                    guard.close();
                }
            };
            let finish = AssertUnwindSafe(streaming.finish(&shared, close)).catch_unwind();
            // Stopped or panicked, the pump fails the tape as it is
            // dropped: no reader waits on it.
            tokio::select! {
                finished = finish => {
                    if let Err(panic) = finished {
                        panicked(&shared, &key, &*panic);
                    }
                }
                () = shared.tasks.stopping() => {
                    tracing::warn!(key = %key.fingerprint(), "layer shut down; a streaming answer stopped unfinished");
                }
            }
            return;
        }
        Some(Ok(Flown::Stale(entry, stored_under, req, inner))) => {
            // Every caller of the flight is answered at once; then, in this
            // task, one refresh fetches the next answer.
            bump(&shared.counters.stale);
            let mut res = asked.answer(&entry);
            let forwarded = crate::stats::Forwarded {
                ttl: entry.ttl_secs(),
                ..Default::default()
            };
            forwarded.note(&mut res, shared.marks.as_deref());
            let own = Ok((res, Outcome::Stale));
            if let Some(guard) = guard {
                guard.land(Landing::Done(entry.clone()));
            }
            caller.answer(own);
            crate::refresh::after_stale(shared.clone(), stored_under, req, inner, entry).await;
            return;
        }
        Some(Ok(Flown::Pass(req, inner))) => {
            // The followers go to the origin at once, in parallel with this
            // caller's own call.
            if let Some(guard) = guard {
                guard.land(Landing::Pass);
            }
            let call = crate::direct::bounded(&shared, inner.oneshot(req), grpc);
            let own = match AssertUnwindSafe(call).catch_unwind().await {
                Ok(own) => own.map(|res| (res, Outcome::Pass)),
                Err(panic) => Ok((
                    panicked(&shared, &key, &*panic).into_response(grpc),
                    Outcome::Pass,
                )),
            };
            caller.answer(own);
            return;
        }
        Some(Err(panic)) => {
            bump(&shared.counters.errors);
            let error = panicked(&shared, &key, &*panic);
            let own = Ok((error.clone().into_response(grpc), Outcome::Leader));
            (Landing::Failed(error), own)
        }
        None => {
            let error = timed_out();
            let own = Ok((error.clone().into_response(grpc), Outcome::Leader));
            (Landing::Failed(error), own)
        }
    };
    if let Some(guard) = guard {
        guard.land(landing);
    }
    caller.answer(own);
}

/// The error for a call to the inner service that panicked: counted,
/// logged, answered `500` (or its gRPC status).
fn panicked<E>(shared: &Shared<E>, key: &Key, panic: &(dyn std::any::Any + Send)) -> FlightError {
    bump(&shared.counters.panics);
    let message = crate::error::panic_message(panic);
    tracing::error!(key = %key.fingerprint(), panic = %message, "inner service panicked; its callers get 500");
    FlightError::new(FlightErrorKind::Panic, message)
}

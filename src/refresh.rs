//! Refreshes: flights that fetch the next answer for a stale one while the
//! stale one is served. Detached from every caller, one per key in a
//! process (the flight table), and with a backend that has leases one per
//! key among every process: the lease is granted only while the stored
//! answer is still the stale one the refresh saw.

use crate::conditions::Asked;
use crate::flight::{FlightGuard, Landing};
use crate::fly::{fly, Brief, Flown};
use crate::origin::{Origin, OriginBody};
use crate::shared::Shared;
use crate::stats::bump;
use crate::{Entry, FlightError, FlightErrorKind, Key, KeyExtractor};
use futures_util::FutureExt;
use http::Request;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// How long a key whose refresh failed is served stale before the next
/// refresh is tried: so a failing origin gets one call per key and second
/// from this process, not one per request.
pub(crate) const BACKOFF: Duration = Duration::from_secs(1);

/// Whether a fresh hit on `entry` should refresh it early, by XFetch with
/// this `beta` (see [`CoalesceConfig::early_refresh`](crate::CoalesceConfig::early_refresh)).
pub(crate) fn due_early(entry: &Entry, beta: f64) -> bool {
    let Some(life) = entry.life() else {
        return false;
    };
    let Some(left) = entry.fresh_for(std::time::SystemTime::now()) else {
        return false;
    };
    // An origin faster than a millisecond still takes some time.
    let took = life.took.max(Duration::from_millis(1)).as_secs_f64() * beta;
    let left = left.as_secs_f64();
    // −ln(u) exceeds 40 with probability e^-40: no need to draw.
    if left > took * 40.0 {
        return false;
    }
    took * -uniform().ln() >= left
}

/// A number in (0, 1], from a per-thread xorshift generator: cheap enough
/// for a hit, and only the spread of the draws matters.
fn uniform() -> f64 {
    use std::cell::Cell;
    use std::hash::BuildHasher;
    thread_local! {
        static STATE: Cell<u64> =
            Cell::new(std::collections::hash_map::RandomState::new().hash_one(0u64) | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        // The top 53 bits, shifted into (0, 1].
        ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    })
}

/// Starts a refresh of `stale` (or, early, of a fresh answer) with `req`
/// (already made the flight's, see
/// [`for_the_flight`](crate::leader::for_the_flight)), unless one is under
/// way for the key or the last one failed within [`BACKOFF`].
pub(crate) fn start<S, E, ReqBody, ResBody>(
    shared: &Arc<Shared<E>>,
    key: Key,
    req: Request<ReqBody>,
    inner: S,
    stale: &Entry,
) where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let Some(guard) = lead(shared, &key, stale) else {
        return;
    };
    let span = crate::trace::refresh(&key);
    // Requests that join the refresh (their stale answer ran out meanwhile)
    // follow from it.
    guard.trace(&span);
    let task = refresh(shared.clone(), guard, key, req, inner, stale.clone());
    shared.tasks.spawn(task.instrument(span));
}

/// A flight found `stale` in the backend and has answered its callers with
/// it: refreshes it in the flight's own task, on the same terms as
/// [`start`].
pub(crate) async fn after_stale<S, E, ReqBody, ResBody>(
    shared: Arc<Shared<E>>,
    key: Key,
    req: Request<ReqBody>,
    inner: S,
    stale: Entry,
) where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    if let Some(guard) = lead(&shared, &key, &stale) {
        refresh(shared, guard, key, req, inner, stale).await;
    }
}

/// The refresh of `stale` under `key`, unless a flight is under way or
/// the last refresh failed within [`BACKOFF`].
fn lead<E>(shared: &Shared<E>, key: &Key, stale: &Entry) -> Option<FlightGuard> {
    if shared.refresh_failed_lately(key) {
        return None;
    }
    shared.table.lead_if_idle(key, stale)
}

async fn refresh<S, E, ReqBody, ResBody>(
    shared: Arc<Shared<E>>,
    guard: FlightGuard,
    key: Key,
    req: Request<ReqBody>,
    inner: S,
    stale: Entry,
) where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    bump(&shared.counters.refreshes);
    let config = &shared.config;
    let deadline = tokio::time::Instant::now() + config.wait_timeout;
    // Nobody's conditions: the refresh's own answer goes to no caller.
    let asked = Asked::default();
    // A refresh falls back on its own stale answer (below), not on one the
    // work finds.
    let unused = std::sync::OnceLock::new();
    let only = guard.only();
    let brief = Brief {
        deadline,
        refresh: Some(stale.clone()),
        fallback: &unused,
        overdue: false,
        only: &only,
    };
    let work = fly(&shared, &key, &asked, req, inner, brief);
    let work = AssertUnwindSafe(work);
    let ended = tokio::select! {
        biased;
        ended = work.catch_unwind() => Some(ended),
        () = tokio::time::sleep_until(deadline) => None,
        () = shared.tasks.stopping() => None,
    };
    let landing = match ended {
        Some(Ok(Flown::Landed(landing, _))) => landing,
        Some(Ok(Flown::Streaming(streaming, _))) => {
            // Requests that joined the refresh read it as it arrives.
            guard.stream(streaming.landing());
            let finish = streaming.finish(&shared, || guard.close());
            tokio::select! {
                landing = AssertUnwindSafe(finish).catch_unwind() => landing.unwrap_or_else(|_| {
                    Landing::Failed(FlightError::new(
                        FlightErrorKind::Panic,
                        "the inner service's body panicked during a refresh",
                    ))
                }),
                () = shared.tasks.stopping() => return,
            }
        }
        // The answer cannot be shared: requests that waited (the stale
        // answer had run out meanwhile) call the origin themselves.
        Some(Ok(Flown::Pass(..))) => Landing::Pass,
        // Another process stored another stale answer meanwhile.
        Some(Ok(Flown::Stale(entry, ..))) => Landing::Done(entry),
        Some(Err(_)) => Landing::Failed(FlightError::new(
            FlightErrorKind::Panic,
            "the inner service panicked during a refresh",
        )),
        None => Landing::Failed(FlightError::new(
            FlightErrorKind::WaitTimeout,
            format!("no refreshed answer within {:?}", config.wait_timeout),
        )),
    };
    let failed = crate::fly::failed(&landing);
    if failed || matches!(landing, Landing::Pass) {
        tracing::debug!(key = %key.fingerprint(), "refresh failed; the stale answer is served for now");
        shared.refresh_failed.insert(&key);
    }
    // Requests that waited on the refresh (the stale answer ran out of its
    // window meanwhile) get it instead of the error, if it may stand in.
    let landing = if failed && stale.may_serve_on_error() {
        let status = crate::fly::failed_status(&landing);
        crate::fly::rescue(&shared, &stale, status)
    } else {
        landing
    };
    guard.land(landing);
}

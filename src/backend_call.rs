//! Every call the layer makes to its [`Backend`](crate::Backend), guarded the
//! same way whatever the backend: bounded by `backend_timeout` (longer for a
//! backend that is slow rather than stalled, see `patient`), counted
//! toward the breaker that skips a failing backend, and turned into a reason
//! the flight goes on without it. A backend that fails or is slow never
//! fails a request.

use crate::shared::Shared;
use crate::stats::bump;

/// Which backend operation a call is: the `op` label of its duration
/// (`coalesce_backend_call_duration_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Find,
    TryLock,
    Watch,
    Renew,
    Complete,
    Store,
    Purge,
    OpenStream,
    AppendStream,
    EndStream,
    ReadStream,
}

impl Op {
    /// Every operation, in the order of their discriminants.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) const ALL: [Op; 11] = [
        Op::Find,
        Op::TryLock,
        Op::Watch,
        Op::Renew,
        Op::Complete,
        Op::Store,
        Op::Purge,
        Op::OpenStream,
        Op::AppendStream,
        Op::EndStream,
        Op::ReadStream,
    ];

    /// The `op` label's value.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Find => "find",
            Op::TryLock => "try_lock",
            Op::Watch => "watch",
            Op::Renew => "renew",
            Op::Complete => "complete",
            Op::Store => "store",
            Op::Purge => "purge",
            Op::OpenStream => "open_stream",
            Op::AppendStream => "append_stream",
            Op::EndStream => "end_stream",
            Op::ReadStream => "read_stream",
        }
    }
}

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
/// is being skipped, otherwise as [`required`].
pub(crate) async fn optional<'a, E, T>(
    shared: &'a Shared<E>,
    op: Op,
    call: impl FnOnce(&'a dyn crate::Backend) -> crate::backend::BackendFuture<'a, T>,
) -> Result<T, Unavailable> {
    if shared.breaker.skipping() {
        return Err(Unavailable::Skipped);
    }
    required(shared, op, call)
        .await
        .map_err(Unavailable::Failed)
}

/// A backend operation a flight must try whatever the backend did before
/// (renewing or completing a lease it holds): bounded as [`patient`] says,
/// its outcome (and how long it took) counted toward skipping the backend,
/// and how long it took reported as `op`'s.
pub(crate) async fn required<'a, E, T>(
    shared: &'a Shared<E>,
    op: Op,
    call: impl FnOnce(&'a dyn crate::Backend) -> crate::backend::BackendFuture<'a, T>,
) -> Result<T, crate::BackendError> {
    let config = &shared.config;
    let started = std::time::Instant::now();
    let result = patient(shared, call(&*config.backend)).await;
    let took = started.elapsed();
    shared.breaker.record_timed(&result, took);
    shared.meter.backend_call(op, took);
    result
}

/// A backend operation given up at `backend_timeout` — unless the backend
/// answered another call within the last two: then it is slow, not
/// stalled, and the operation is waited on for another `backend_timeout`,
/// and so on, up to half a lease. A saturated Redis (thousands of hot keys at once)
/// answers late but answers; giving every late lease attempt up would turn
/// coalescing across instances into one origin call per instance exactly
/// when the system is busiest. A stalled or unreachable Redis answers
/// nothing, and costs a call `backend_timeout` as before (up to three when
/// it stalled just after answering).
async fn patient<E, T>(
    shared: &Shared<E>,
    mut op: crate::backend::BackendFuture<'_, T>,
) -> Result<T, crate::BackendError> {
    let config = &shared.config;
    let limit = config.backend_timeout;
    let cap = (config.lease / 2).max(limit);
    let started = tokio::time::Instant::now();
    loop {
        if let Ok(result) = tokio::time::timeout(limit, op.as_mut()).await {
            return result;
        }
        // Late: how late Redis answers is worth knowing now.
        probe(shared);
        let waited = started.elapsed();
        // Two bounds back, or twice as long as the last answered call took:
        // a call answered late is itself the evidence for those after it.
        if waited + limit > cap || !shared.breaker.answered_within(limit * 2) {
            return Err(crate::BackendError::msg(format!(
                "no answer from the backend within {waited:?}"
            )));
        }
    }
}

/// Asks the backend, detached from every caller, for something it has not
/// got — unless such a probe is under way: when every call is given up at
/// `backend_timeout` because Redis answers later than that, no call is ever
/// answered, and nothing would show that it is slow rather than stalled.
/// A probe waits up to half a lease; its answer, when it comes, shows it
/// (calls under way then are waited on, and are answered in turn), and
/// costs one lookup. A stalled Redis answers no probe, and its calls keep
/// being given up at `backend_timeout`.
fn probe<E>(shared: &Shared<E>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if !shared.breaker.start_probe() {
        return;
    }
    let backend = shared.config.backend.clone();
    let limit = (shared.config.lease / 2).max(shared.config.backend_timeout);
    let breaker = shared.breaker.clone();
    let probe = async move {
        let key = crate::Key::from("tower-coalesce: a probe of the backend's latency");
        let started = std::time::Instant::now();
        let answered = bounded(limit, backend.lookup(&key)).await;
        if answered.is_ok() {
            breaker.record_timed(&answered, started.elapsed());
        }
        breaker.end_probe();
    };
    // Not one of the layer's tasks: it holds no lease and answers no
    // caller, so a shutdown does not wait for it (bounded all the same).
    runtime.spawn(probe);
}

/// A backend operation, given up after `limit`.
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

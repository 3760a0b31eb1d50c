//! Every call the layer makes to its [`Backend`](crate::Backend), guarded the
//! same way whatever the backend: bounded by `backend_timeout`, counted
//! toward the breaker that skips a failing backend, and turned into a reason
//! the flight goes on without it. A backend that fails or is slow never
//! fails a request.

use crate::shared::Shared;
use crate::stats::bump;

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

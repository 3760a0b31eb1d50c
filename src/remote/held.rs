//! A lease this process holds: kept alive while its flight runs, released
//! if the flight is dropped, and ended through the owner-checked
//! `complete`.

use crate::backend::{Completed, Completion, LeaseToken};
use crate::backend_call::{bounded, required, Op};
use crate::shared::Shared;
use crate::stats::bump;
use crate::{Backend, Key};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// How often a held lease is renewed.
fn renew_every(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(1))
}

/// Runs `work` while renewing the lease every lease/3. A renewal that fails
/// is observed and counted: the work goes on (its callers still want the
/// answer), and the owner check in `complete` keeps it from touching a
/// successor's lease or value.
pub(crate) async fn with_watchdog<E, T>(
    shared: &Shared<E>,
    key: &Key,
    token: &LeaseToken,
    work: impl Future<Output = T>,
) -> (T, bool) {
    let config = &shared.config;
    let lost = std::sync::atomic::AtomicBool::new(false);
    let watchdog = async {
        let mut tick = tokio::time::interval(renew_every(config.lease));
        tick.tick().await;
        loop {
            tick.tick().await;
            match required(shared, Op::Renew, |b| b.renew(key, token, config.lease)).await {
                Ok(true) => {}
                Ok(false) => {
                    bump(&shared.counters.lease_lost);
                    lost.store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        key = %key.fingerprint(),
                        "lease lost while the origin call ran; another instance may lead now"
                    );
                    return std::future::pending::<()>().await;
                }
                Err(error) => {
                    bump(&shared.counters.backend_errors);
                    tracing::warn!(key = %key.fingerprint(), %error, "lease renewal failed; trying again");
                }
            }
        }
    };
    let out = tokio::select! {
        out = work => out,
        _ = watchdog => unreachable!("the watchdog never ends"),
    };
    (out, lost.into_inner())
}

/// A held lease that is released if its flight is dropped before completing
/// (cancelled, or ended at the wait timeout): the waiting processes are told
/// at once instead of waiting for the lease to run out.
pub(crate) struct Held {
    release: Option<(Arc<dyn Backend>, Key, LeaseToken, Duration)>,
    /// The layer's tasks: a layer shutting down waits for the release.
    tasks: TaskTracker,
}

impl Held {
    pub(crate) fn new<E>(shared: &Shared<E>, key: &Key, token: &LeaseToken) -> Self {
        let config = &shared.config;
        Self {
            release: Some((
                config.backend.clone(),
                key.clone(),
                token.clone(),
                config.backend_timeout,
            )),
            tasks: shared.tasks.tracker(),
        }
    }

    /// The flight completed (or tried to): nothing to release.
    pub(crate) fn disarm(mut self) {
        self.release = None;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some((backend, key, token, limit)) = self.release.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let release = async move {
            // Owner-checked: a lease that moved on is left alone.
            let release = backend.complete(&key, &token, Completion::Released);
            if let Err(error) = bounded(limit, release).await {
                tracing::warn!(key = %key.fingerprint(), %error, "releasing an abandoned lease failed; it runs out by itself");
            }
        };
        self.tasks.spawn_on(release, &runtime);
    }
}

/// Ends a leased flight as `completion` says, wakes the waiting processes
/// and releases the lease, in one step, only if the lease is still ours.
pub(crate) async fn complete<E>(
    shared: &Shared<E>,
    key: &Key,
    token: &LeaseToken,
    completion: Completion,
    counted_lost: bool,
) {
    let stored = matches!(completion, Completion::Stored { .. });
    match required(shared, Op::Complete, |b| b.complete(key, token, completion)).await {
        Ok(Completed::Done) if stored => bump(&shared.counters.stored),
        Ok(Completed::Done | Completed::NotStored) => {}
        Ok(Completed::Lost) => {
            // Once per lost lease: the watchdog may have counted it already.
            if !counted_lost {
                bump(&shared.counters.lease_lost);
            }
            tracing::warn!(
                key = %key.fingerprint(),
                "lease lost before completion; the answer went to local callers only"
            );
        }
        Err(error) => {
            bump(&shared.counters.backend_errors);
            tracing::warn!(key = %key.fingerprint(), %error, "completing the flight failed; waiters take over after the lease");
        }
    }
}

//! Shutting a layer down: the tasks a layer spawns (flights, lease
//! releases) are tracked, so that [`CoalesceLayer::shutdown`](crate::CoalesceLayer::shutdown)
//! can wait for them, stop those still running at the end of the grace, and
//! return only once every lease they held has been released.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The tasks of one layer, and the signal that stops them.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
    /// Set by `shutdown`: requests from then on bypass.
    closed: AtomicBool,
    /// Flights that observed `stop`.
    stopped: AtomicUsize,
}

impl Tasks {
    /// Runs `task` on the current runtime, tracked.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// The tracker, for work spawned where the layer is not at hand (a lease
    /// released on drop).
    pub(crate) fn tracker(&self) -> TaskTracker {
        self.tracker.clone()
    }

    /// Whether the layer was shut down: new requests bypass it.
    pub(crate) fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Closes the layer, waits up to `grace` for its tasks, stops those
    /// still running, and waits for them to end.
    pub(crate) async fn shutdown(&self, grace: Duration) -> Shutdown {
        self.closed.store(true, Ordering::Relaxed);
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            self.stop.cancel();
            // The stopped flights end at once; the lease releases they
            // spawn are bounded by the backend timeout.
            self.tracker.wait().await;
        }
        Shutdown {
            stopped_flights: self.stopped.load(Ordering::Relaxed),
        }
    }

    /// Completes when the flights under way must stop; counts the flight.
    pub(crate) async fn stopping(&self) {
        self.stop.cancelled().await;
        self.stopped.fetch_add(1, Ordering::Relaxed);
    }
}

/// What [`CoalesceLayer::shutdown`](crate::CoalesceLayer::shutdown) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Shutdown {
    /// Flights still under way at the end of the grace, stopped: their
    /// followers got `503` ([`FlightErrorKind::Dropped`](crate::FlightErrorKind::Dropped))
    /// and their leases were released.
    pub stopped_flights: usize,
}

//! A follower's side of a flight: its hold on it, and its wait for the
//! landing, woken once, never polling.

use super::{Entry, Flight, Landing, Varied};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::futures::OwnedNotified;

/// A follower's hold on a flight.
#[derive(Debug)]
pub(crate) struct FlightReceiver {
    pub(super) flight: Arc<Flight>,
}

impl FlightReceiver {
    /// Waits for the flight to land. `None` means it was abandoned without an
    /// answer (its leader was cancelled): the caller should join again.
    pub(crate) fn wait(self) -> Wait {
        // Registered before the slot is read, so a landing between the two
        // still wakes this waiter.
        let notified = self.flight.landed.clone().notified_owned();
        Wait {
            receiver: self,
            notified,
        }
    }
}

impl Drop for FlightReceiver {
    fn drop(&mut self) {
        if self.flight.followers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.flight.gone.notify_waiters();
        }
    }
}

pin_project! {
    /// The future of [`FlightReceiver::wait`]: a follower's whole wait, woken
    /// by the landing, never polling.
    #[derive(Debug)]
    pub(crate) struct Wait {
        receiver: FlightReceiver,
        #[pin]
        notified: OwnedNotified,
    }
}

impl Wait {
    /// The variant the flight was made for, if it was made for one only.
    pub(crate) fn only(&self) -> Option<&Varied> {
        self.receiver.flight.only.get()
    }

    /// The flight's span, if it is recorded.
    pub(crate) fn span(&self) -> Option<&tracing::Span> {
        self.receiver.flight.span.get()
    }

    /// For a refresh, the answer it replaces, to answer with while it
    /// runs.
    pub(crate) fn refreshed(&self) -> Option<&Entry> {
        self.receiver.flight.refreshes.get()
    }
}

impl Wait {
    /// Ready once the flight has landed; [`landing`](Self::landing) then
    /// reads the landing where it is. Followers do not each clone it: at a
    /// landing, a million of them would each touch its reference counts,
    /// one cache line bouncing between the runtime's workers.
    pub(crate) fn poll_landed(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        // The registration first: once woken it completes without a lock, and
        // a completed one is dropped without one too. Reading the slot first
        // would leave it registered, and its drop would take the `Notify`'s
        // lock, contending with the landing as it wakes the other followers.
        if this.notified.poll(cx).is_pending() {
            // Not woken yet, but the flight may have landed already (the
            // landing is still waking others): no need to wait for it.
            return match this.receiver.flight.slot.get() {
                Some(_) => Poll::Ready(()),
                None => Poll::Pending,
            };
        }
        // `settle` writes the slot before it wakes anyone.
        Poll::Ready(())
    }

    /// How the flight landed, once [`poll_landed`](Self::poll_landed) is
    /// ready: `None` if it was abandoned.
    pub(crate) fn landing(&self) -> Option<&Landing> {
        self.receiver.flight.slot.get().and_then(Option::as_ref)
    }
}

impl Future for Wait {
    type Output = Option<Landing>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        std::task::ready!(self.as_mut().poll_landed(cx));
        Poll::Ready(self.landing().cloned())
    }
}

//! [`Watch`]: how a process waiting on another process's flight is woken.
//!
//! A backend that has flights in other processes hands out one `Watch` per
//! waiting flight. It fires when the backend hears that the flight ended, and
//! also whenever the backend may have missed such news (a reconnect), so that
//! the waiter looks again. It never fires on a timer: waiters are woken by
//! messages, not by polling.

use tokio::sync::watch;

/// Fires when the flight a process waits on may have ended.
///
/// A backend makes one from an [`Announcer`] (its side of the news of one
/// key's flights), and may attach a guard that lives as long as the watch
/// (to unsubscribe when the last waiter leaves, say).
pub struct Watch {
    rx: watch::Receiver<Notice>,
    _guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

/// A backend's side of the news of one key's flights: each
/// [`announce`](Announcer::announce) reaches every [`Watch`] made from it.
#[derive(Debug)]
pub struct Announcer {
    tx: watch::Sender<Notice>,
}

impl Default for Announcer {
    fn default() -> Self {
        Self::new()
    }
}

impl Announcer {
    /// An announcer with no news yet.
    pub fn new() -> Self {
        Self {
            tx: watch::Sender::new(Notice::LookAgain),
        }
    }

    /// A watch that hears what is announced from now on.
    pub fn watch(&self) -> Watch {
        Watch {
            rx: self.tx.subscribe(),
            _guard: None,
        }
    }

    /// Tells every watch made from this announcer.
    pub fn announce(&self, notice: Notice) {
        self.tx.send_replace(notice);
    }
}

/// What a [`Watch`] learned of the flight it watches.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Notice {
    /// The flight may have ended, or news of it may have been lost: look
    /// for a stored answer, and try the lease.
    LookAgain,
    /// The flight ended with this answer, for its waiters only: it was not
    /// stored ([`Completion::Shared`](super::Completion::Shared)).
    Answer(crate::Entry),
    /// The flight's answer could not be shared: call the origin yourself
    /// ([`Completion::Pass`](super::Completion::Pass)).
    Pass,
    /// The flight's answer is streaming, or its stream grew or ended: read
    /// it ([`Streams::read_stream`](super::Streams::read_stream)).
    Streaming,
}

impl Watch {
    /// The same watch, keeping `guard` until it is dropped.
    pub fn guarded(mut self, guard: impl std::any::Any + Send + Sync) -> Self {
        self._guard = Some(Box::new(guard));
        self
    }

    /// Resolves at the next sign that the flight may have ended, with what
    /// it said. Returns `None` if the backend can no longer deliver signs
    /// (it was dropped). Only the latest notice is kept: one overtaken
    /// before it was read is lost, and the waiter then looks again.
    pub async fn changed(&mut self) -> Option<Notice> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }

    /// A notice that has arrived and not been read yet, without waiting.
    pub(crate) fn arrived(&mut self) -> Option<Notice> {
        if !self.rx.has_changed().unwrap_or(false) {
            return None;
        }
        Some(self.rx.borrow_and_update().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_announcement_reaches_the_watches_made_before_it() {
        let announcer = Announcer::new();
        let mut early = announcer.watch();
        announcer.announce(Notice::Pass);
        assert!(matches!(early.changed().await, Some(Notice::Pass)));
        let mut late = announcer.watch().guarded(());
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), late.changed())
                .await
                .is_err(),
            "a watch hears only what comes after it"
        );
        drop(announcer);
        assert!(late.changed().await.is_none(), "the backend is gone");
    }
}

//! Routes a connection's pub/sub messages to the [`Watch`]es of the
//! flights this process waits on, one channel per key, and orders each
//! channel's subscription changes.

use super::super::watch::{Announcer, Notice, Watch};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// Routes signs to watches by channel, shared between a backend and its
/// connection's push handler.
///
/// It also orders a channel's subscription changes: a subscription for a new
/// watch is sent only after an unsubscription of the same channel that is
/// under way has been answered. Otherwise a new waiter's `SUBSCRIBE` could
/// reach the server first, and the late `UNSUBSCRIBE` would end the
/// subscription that waiter relies on.
#[derive(Debug, Default, Clone)]
pub(crate) struct Channels {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    watched: HashMap<String, Channel>,
    /// Channels whose unsubscription is under way, each with the signal of
    /// its end.
    unsubscribing: HashMap<String, Arc<Notify>>,
}

/// An unsubscription under way: while it lives, new watches of its channel
/// wait before they subscribe. Dropping it (the server answered, or the
/// attempt was given up) lets them go on.
pub(crate) struct Unsubscribing {
    channels: Channels,
    name: String,
    done: Arc<Notify>,
}

impl Drop for Unsubscribing {
    fn drop(&mut self) {
        self.channels.lock().unsubscribing.remove(&self.name);
        // After the removal: a watch that saw the entry holds a registration
        // made under the lock, which this wakes.
        self.done.notify_waiters();
    }
}

#[derive(Debug)]
struct Channel {
    watchers: usize,
    announcer: Announcer,
    /// The key whose flight the channel reports, for answers that arrive in
    /// the message itself.
    key: crate::Key,
}

/// Keeps a watch's channel registered; unregistering the last one calls
/// `on_last` (which unsubscribes).
struct Registration {
    channels: Channels,
    name: String,
    on_last: Option<Box<dyn FnOnce(String) + Send + Sync>>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .finish()
    }
}

impl Channels {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.inner)
    }

    /// A watch on `name`, and, if an unsubscription of `name` is under way,
    /// what resolves when it ends: subscribe only after that. `on_last` runs
    /// when the last watch on `name` is dropped.
    pub(crate) fn watch(
        &self,
        name: &str,
        key: &crate::Key,
        on_last: impl FnOnce(String) + Send + Sync + 'static,
    ) -> (Watch, Option<OwnedNotified>) {
        let mut state = self.lock();
        // Made under the lock, so the end of the unsubscription cannot slip
        // between the check and the wait.
        let pending = state
            .unsubscribing
            .get(name)
            .map(|done| done.clone().notified_owned());
        let channel = state
            .watched
            .entry(name.to_owned())
            .or_insert_with(|| Channel {
                watchers: 0,
                announcer: Announcer::new(),
                key: key.clone(),
            });
        channel.watchers += 1;
        let watch = channel.announcer.watch();
        let registration = Registration {
            channels: self.clone(),
            name: name.to_owned(),
            on_last: Some(Box::new(on_last)),
        };
        (watch.guarded(registration), pending)
    }

    /// Starts unsubscribing from `name`, unless someone watches it again
    /// (then the subscription must stay) or an unsubscription of it is
    /// already under way (it covers this one): then `None`. A watch made
    /// while the returned value lives waits for its drop before subscribing.
    pub(crate) fn unsubscribing(&self, name: &str) -> Option<Unsubscribing> {
        let mut state = self.lock();
        if state.watched.contains_key(name) || state.unsubscribing.contains_key(name) {
            return None;
        }
        let done = Arc::new(Notify::new());
        state.unsubscribing.insert(name.to_owned(), done.clone());
        Some(Unsubscribing {
            channels: self.clone(),
            name: name.to_owned(),
            done,
        })
    }

    /// A message arrived on `name`. If anyone watches it, `read` runs with
    /// the key of the channel's flight (to keep an answer that came in the
    /// message, so that the woken waiters find it) and says what the
    /// watches are told.
    pub(crate) fn signal(&self, name: &str, read: impl FnOnce(&crate::Key) -> Notice) {
        let state = self.lock();
        if let Some(channel) = state.watched.get(name) {
            channel.announcer.announce(read(&channel.key));
        }
    }

    /// Whether anyone watches `name`.
    pub(crate) fn watched(&self, name: &str) -> bool {
        self.lock().watched.contains_key(name)
    }

    /// Messages may have been lost: wake every watch.
    pub(crate) fn signal_all(&self) {
        for channel in self.lock().watched.values() {
            channel.announcer.announce(Notice::LookAgain);
        }
    }

    /// How many channels are watched.
    pub(crate) fn len(&self) -> usize {
        self.lock().watched.len()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let last = {
            let mut state = self.channels.lock();
            match state.watched.get_mut(&self.name) {
                Some(channel) if channel.watchers > 1 => {
                    channel.watchers -= 1;
                    false
                }
                Some(_) => {
                    state.watched.remove(&self.name);
                    true
                }
                None => false,
            }
        };
        if last {
            if let Some(on_last) = self.on_last.take() {
                on_last(std::mem::take(&mut self.name));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_signal_wakes_the_watches_of_its_channel_only() {
        let channels = Channels::default();
        let key = crate::Key::from("k");
        let (mut a, _) = channels.watch("a", &key, |_| {});
        let (mut a2, _) = channels.watch("a", &key, |_| {});
        let (mut b, _) = channels.watch("b", &key, |_| {});
        channels.signal("a", |_| Notice::Pass);
        assert!(matches!(a.changed().await, Some(Notice::Pass)));
        assert!(matches!(a2.changed().await, Some(Notice::Pass)));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), b.changed())
                .await
                .is_err()
        );
        channels.signal_all();
        assert!(matches!(b.changed().await, Some(Notice::LookAgain)));
    }

    #[test]
    fn the_last_watch_dropped_unregisters_its_channel_once() {
        let channels = Channels::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = |c: &Arc<AtomicUsize>| {
            let c = c.clone();
            move |_: String| {
                c.fetch_add(1, Ordering::SeqCst);
            }
        };
        let key = crate::Key::from("k");
        let (a, _) = channels.watch("a", &key, counter(&calls));
        let (a2, _) = channels.watch("a", &key, counter(&calls));
        drop(a);
        assert_eq!((calls.load(Ordering::SeqCst), channels.len()), (0, 1));
        drop(a2);
        assert_eq!((calls.load(Ordering::SeqCst), channels.len()), (1, 0));
    }

    #[tokio::test]
    async fn a_watch_made_while_its_channel_is_unsubscribed_waits_for_that() {
        use futures_util::FutureExt;
        let channels = Channels::default();
        let key = crate::Key::from("k");
        let (first, pending) = channels.watch("a", &key, |_| {});
        assert!(pending.is_none(), "nothing under way: subscribe at once");
        assert!(
            channels.unsubscribing("a").is_none(),
            "a watched channel is never unsubscribed"
        );
        drop(first);
        let unsubscribing = channels.unsubscribing("a").expect("nobody watches a");
        let (_second, pending) = channels.watch("a", &key, |_| {});
        let mut pending = Box::pin(pending.expect("an unsubscription is under way"));
        assert!(
            (&mut pending).now_or_never().is_none(),
            "must not subscribe before the unsubscription is answered"
        );
        // Watched again: a retry would now leave the subscription alone.
        assert!(channels.unsubscribing("a").is_none());
        drop(unsubscribing);
        pending.await;
        let (_third, pending) = channels.watch("a", &key, |_| {});
        assert!(pending.is_none());
    }
}

//! [`Watch`]: how a process waiting on another process's flight is woken.
//!
//! A backend that has flights in other processes hands out one `Watch` per
//! waiting flight. It fires when the backend hears that the flight ended, and
//! also whenever the backend may have missed such news (a reconnect), so that
//! the waiter looks again. It never fires on a timer: waiters are woken by
//! messages, not by polling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Fires when the flight a process waits on may have ended.
#[derive(Debug)]
pub struct Watch {
    rx: watch::Receiver<u64>,
    _registration: Option<Registration>,
}

impl Watch {
    /// Resolves at the next sign that the flight may have ended. Returns
    /// `false` if the backend can no longer deliver signs (it was dropped).
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

/// Routes signs to watches by channel, shared between a backend and its
/// connection's push handler.
#[derive(Debug, Default, Clone)]
pub(crate) struct Channels {
    inner: Arc<Mutex<HashMap<String, Channel>>>,
}

#[derive(Debug)]
struct Channel {
    watchers: usize,
    sender: watch::Sender<u64>,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A watch on `name`. `on_last` runs when the last watch on `name` is
    /// dropped.
    pub(crate) fn watch(
        &self,
        name: &str,
        key: &crate::Key,
        on_last: impl FnOnce(String) + Send + Sync + 'static,
    ) -> Watch {
        let mut map = self.lock();
        let channel = map.entry(name.to_owned()).or_insert_with(|| Channel {
            watchers: 0,
            sender: watch::Sender::new(0),
            key: key.clone(),
        });
        channel.watchers += 1;
        let rx = channel.sender.subscribe();
        let registration = Registration {
            channels: self.clone(),
            name: name.to_owned(),
            on_last: Some(Box::new(on_last)),
        };
        Watch {
            rx,
            _registration: Some(registration),
        }
    }

    /// A message arrived on `name`. `before` runs first, with the key of the
    /// channel's flight, if anyone watches it (to keep an answer that came
    /// in the message, so that the woken waiters find it).
    pub(crate) fn signal(&self, name: &str, before: impl FnOnce(&crate::Key)) {
        let map = self.lock();
        if let Some(channel) = map.get(name) {
            before(&channel.key);
            channel.sender.send_modify(|n| *n += 1);
        }
    }

    /// Messages may have been lost: wake every watch.
    pub(crate) fn signal_all(&self) {
        for channel in self.lock().values() {
            channel.sender.send_modify(|n| *n += 1);
        }
    }

    /// Whether anyone in this process watches `name`.
    pub(crate) fn is_watched(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// How many channels are watched.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let last = {
            let mut map = self.channels.lock();
            match map.get_mut(&self.name) {
                Some(channel) if channel.watchers > 1 => {
                    channel.watchers -= 1;
                    false
                }
                Some(_) => {
                    map.remove(&self.name);
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
        let mut a = channels.watch("a", &key, |_| {});
        let mut a2 = channels.watch("a", &key, |_| {});
        let mut b = channels.watch("b", &key, |_| {});
        channels.signal("a", |_| {});
        assert!(a.changed().await && a2.changed().await);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), b.changed())
                .await
                .is_err()
        );
        channels.signal_all();
        assert!(b.changed().await);
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
        let a = channels.watch("a", &key, counter(&calls));
        let a2 = channels.watch("a", &key, counter(&calls));
        drop(a);
        assert_eq!((calls.load(Ordering::SeqCst), channels.len()), (0, 1));
        drop(a2);
        assert_eq!((calls.load(Ordering::SeqCst), channels.len()), (1, 0));
    }
}

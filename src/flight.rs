//! The in-process flight table: at most one flight per key, and the channel
//! through which its followers learn how it ended.
//!
//! Joining and leaving happen under one lock, so a flight that is being removed
//! can never gain a follower that will not hear from it: a follower either sees
//! the flight's answer or sees its sender dropped (the flight was abandoned) and
//! joins again. The table must never hold a flight that no task will finish;
//! [`FlightGuard`] removes the entry when the leader's task ends, whichever way.

use crate::{Entry, FlightError, Key};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// How a flight ended, as its followers see it.
#[derive(Debug, Clone)]
pub(crate) enum Landing {
    /// The answer, for everyone.
    Done(Entry),
    /// The answer may not be shared: call the inner service yourself.
    Uncacheable,
    /// The flight failed; its followers get this error.
    Failed(FlightError),
}

type Slot = Option<Landing>;

/// The sending side of a flight, held by its leader task.
pub(crate) type FlightSender = Arc<watch::Sender<Slot>>;

/// The receiving side of a flight, held by each follower.
pub(crate) type FlightReceiver = watch::Receiver<Slot>;

/// What [`FlightTable::join`] made of the caller.
pub(crate) enum Role {
    /// First for this key: run the flight, then [`FlightGuard::land`] it.
    Leader(FlightGuard),
    /// Another flight is under way: wait on it.
    Follower(FlightReceiver),
}

/// The flights under way in this process, by key.
#[derive(Debug, Default, Clone)]
pub(crate) struct FlightTable {
    flights: Arc<Mutex<HashMap<Key, FlightSender>>>,
}

impl FlightTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, FlightSender>> {
        // A panic while holding this lock cannot leave the map half-changed
        // (every critical section is a single map operation), so poisoning is
        // ignored rather than spread to every later request.
        self.flights.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leads the flight for `key`, or follows the one under way.
    pub(crate) fn join(&self, key: &Key) -> Role {
        let mut flights = self.lock();
        if let Some(sender) = flights.get(key) {
            return Role::Follower(sender.subscribe());
        }
        let sender = Arc::new(watch::Sender::new(None));
        flights.insert(key.clone(), sender.clone());
        Role::Leader(FlightGuard {
            table: self.clone(),
            key: key.clone(),
            sender,
        })
    }

    /// How many flights are under way.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The leader's hold on its table entry. Dropping it without landing removes
/// the entry and drops the sender, which tells every follower the flight was
/// abandoned.
#[derive(Debug)]
pub(crate) struct FlightGuard {
    table: FlightTable,
    key: Key,
    sender: FlightSender,
}

impl FlightGuard {
    /// Removes the flight from the table, then tells its followers how it
    /// ended. In that order: a request arriving after the answer must start a
    /// new flight (or find the stored answer), never join a finished one.
    pub(crate) fn land(self, landing: Landing) {
        self.remove();
        self.sender.send_replace(Some(landing));
    }

    /// Resolves when no follower is waiting any more.
    pub(crate) async fn followers_gone(&self) {
        self.sender.closed().await
    }

    /// Removes the flight from the table if nobody follows it. Checked under
    /// the table lock, so no follower can join between the check and the removal.
    pub(crate) fn abandon_if_unfollowed(&self) -> bool {
        let mut flights = self.table.lock();
        if self.sender.receiver_count() > 0 {
            return false;
        }
        Self::remove_locked(&mut flights, &self.key, &self.sender);
        true
    }

    fn remove(&self) {
        Self::remove_locked(&mut self.table.lock(), &self.key, &self.sender);
    }

    fn remove_locked(flights: &mut HashMap<Key, FlightSender>, key: &Key, sender: &FlightSender) {
        if flights.get(key).is_some_and(|s| Arc::ptr_eq(s, sender)) {
            flights.remove(key);
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Waits for the flight to land. `None` means it was abandoned without an
/// answer (its leader was cancelled): the caller should join again.
pub(crate) async fn wait(receiver: &mut FlightReceiver) -> Option<Landing> {
    match receiver.wait_for(Option::is_some).await {
        Ok(slot) => slot.clone(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FlightErrorKind;

    fn key() -> Key {
        Key::from("k")
    }

    #[tokio::test]
    async fn one_leader_and_followers_hear_the_landing() {
        let table = FlightTable::default();
        let Role::Leader(guard) = table.join(&key()) else {
            panic!("first caller must lead")
        };
        let Role::Follower(mut rx) = table.join(&key()) else {
            panic!("second caller must follow")
        };
        assert_eq!(table.len(), 1);
        guard.land(Landing::Failed(FlightError::new(
            FlightErrorKind::Origin,
            "x",
        )));
        assert_eq!(table.len(), 0);
        assert!(matches!(wait(&mut rx).await, Some(Landing::Failed(_))));
    }

    #[tokio::test]
    async fn dropped_leader_releases_followers_and_the_entry() {
        let table = FlightTable::default();
        let Role::Leader(guard) = table.join(&key()) else {
            panic!()
        };
        let Role::Follower(mut rx) = table.join(&key()) else {
            panic!()
        };
        drop(guard);
        assert_eq!(table.len(), 0);
        assert!(wait(&mut rx).await.is_none());
        assert!(matches!(table.join(&key()), Role::Leader(_)));
    }

    #[tokio::test]
    async fn an_old_guard_never_removes_a_newer_flight() {
        let table = FlightTable::default();
        let Role::Leader(old) = table.join(&key()) else {
            panic!()
        };
        assert!(old.abandon_if_unfollowed());
        let Role::Leader(_new) = table.join(&key()) else {
            panic!()
        };
        drop(old);
        assert_eq!(table.len(), 1, "the newer flight must stay");
    }

    #[tokio::test]
    async fn a_followed_flight_is_not_abandoned() {
        let table = FlightTable::default();
        let Role::Leader(guard) = table.join(&key()) else {
            panic!()
        };
        let Role::Follower(rx) = table.join(&key()) else {
            panic!()
        };
        assert!(!guard.abandon_if_unfollowed());
        drop(rx);
        assert!(guard.abandon_if_unfollowed());
        assert_eq!(table.len(), 0);
    }
}

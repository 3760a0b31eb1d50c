//! The in-process flight table: at most one flight per key, and the channel
//! through which its followers learn how it ended.
//!
//! Joining and leaving happen under one lock, so a flight that is being removed
//! can never gain a follower that will not hear from it: a follower either sees
//! the flight's answer or sees its sender dropped (the flight was abandoned) and
//! joins again. The table must never hold a flight that no task will finish;
//! [`FlightGuard`] removes the entry when the leader's task ends, whichever way.

mod wait;

pub(crate) use wait::{FlightReceiver, Wait};

use crate::stats::{Meter, Started};
use crate::tape::Tape;
use crate::{Entry, FlightError, Key};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::sync::Notify;

/// How a flight ended, as its followers see it.
#[derive(Debug, Clone)]
pub(crate) enum Landing {
    /// The answer, for everyone.
    Done(Entry),
    /// The answer, for everyone (or, if it varies, for the followers that
    /// match), while its body is still arriving.
    Streaming(Arc<Streamed>),
    /// The answer, for the followers that asked with the same values of the
    /// headers it varies on; the others call the inner service themselves.
    Varied(Entry, Arc<Varied>),
    /// The origin failed (with this status, if it answered at all); this
    /// stale answer stands in for the failure, for everyone
    /// (stale-if-error).
    Rescued(Entry, Option<http::StatusCode>),
    /// Pass: the answer may not be shared; call the inner service yourself.
    Pass,
    /// The flight failed; its followers get this error.
    Failed(FlightError),
}

/// A flight's answer whose head has arrived and whose body is arriving:
/// every caller reads the one [`Tape`].
#[derive(Debug)]
pub(crate) struct Streamed {
    /// The head, as an entry without a body: status, headers, and where
    /// the fill stands in the purge order.
    pub(crate) head: Entry,
    pub(crate) tape: Arc<Tape>,
    /// Set if the answer varies on headers outside the key.
    pub(crate) varied: Option<Arc<Varied>>,
    /// The whole answer, once its body is complete and small enough to be
    /// kept whole: callers from then on get it as any other answer.
    pub(crate) whole: OnceLock<Entry>,
}

pub(crate) use crate::vary::Varied;

/// One flight's meeting point: written once by its leader, read by every
/// follower. Kept small on purpose: a follower holds one `Arc` of it and one
/// wait registration, nothing per follower is allocated here.
#[derive(Debug, Default)]
struct Flight {
    /// `Some` once the flight landed; `None` inside means it was abandoned.
    slot: OnceLock<Option<Landing>>,
    /// Woken once, when `slot` is set.
    landed: Arc<Notify>,
    /// Followers still waiting (their [`FlightReceiver`]s alive).
    followers: AtomicUsize,
    /// Woken when `followers` drops to zero.
    gone: Notify,
    /// Set when the flight was made for one variant of its key's answers
    /// (its leader found them varying before it went on): whatever it
    /// lands is for the followers that select that variant only.
    only: Arc<OnceLock<Varied>>,
    /// The flight's tracing span, while it is recorded: its followers'
    /// spans follow from it. Held here, so that it stays open as long as a
    /// follower may still link to it.
    span: OnceLock<tracing::Span>,
    /// For a refresh, the answer it replaces: callers that join it are
    /// answered with that at once, while it may still be served, rather
    /// than wait (set before the flight enters the table).
    refreshes: OnceLock<Entry>,
}

impl Flight {
    fn settle(&self, landing: Option<Landing>) {
        // Set before waking: a woken follower must find the landing.
        let _ = self.slot.set(landing);
        self.landed.notify_waiters();
    }
}

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
    flights: Arc<Mutex<HashMap<Key, Arc<Flight>>>>,
    /// Told how many flights are under way, and how long each took.
    meter: Meter,
}

impl FlightTable {
    /// An empty table, reporting to `meter`.
    pub(crate) fn new(meter: Meter) -> Self {
        Self {
            flights: Arc::default(),
            meter,
        }
    }

    /// A new flight for `key`, in `flights` (this table's, locked).
    fn lead(&self, flights: &mut HashMap<Key, Arc<Flight>>, key: &Key) -> FlightGuard {
        let flight = Arc::new(Flight::default());
        flights.insert(key.clone(), flight.clone());
        // Under the lock: the last count set is the table's.
        self.meter.flights(flights.len());
        FlightGuard {
            table: self.clone(),
            key: key.clone(),
            flight,
            started: Started::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Arc<Flight>>> {
        crate::sync::lock(&self.flights)
    }

    /// Leads the flight for `key`, or follows the one under way.
    pub(crate) fn join(&self, key: &Key) -> Role {
        let mut flights = self.lock();
        if let Some(flight) = flights.get(key) {
            // Counted under the table lock, so `abandon_if_unfollowed` never
            // misses a follower that is joining.
            flight.followers.fetch_add(1, Ordering::Relaxed);
            return Role::Follower(FlightReceiver {
                flight: flight.clone(),
            });
        }
        Role::Leader(self.lead(&mut flights, key))
    }

    /// Follows the flight under way for `key`, if there is one; never
    /// leads.
    pub(crate) fn follow(&self, key: &Key) -> Option<FlightReceiver> {
        let flights = self.lock();
        let flight = flights.get(key)?;
        flight.followers.fetch_add(1, Ordering::Relaxed);
        Some(FlightReceiver {
            flight: flight.clone(),
        })
    }

    /// Leads a refresh of `stale` for `key` if no flight is under way;
    /// never follows. Nobody waits on a refresh: a request that finds one
    /// running is answered with `stale` instead (see
    /// [`Wait::refreshed`]), while it may be served.
    pub(crate) fn lead_if_idle(&self, key: &Key, stale: &Entry) -> Option<FlightGuard> {
        let mut flights = self.lock();
        if flights.contains_key(key) {
            return None;
        }
        let guard = self.lead(&mut flights, key);
        // Under the lock: no caller joins before it is set.
        let _ = guard.flight.refreshes.set(stale.clone());
        Some(guard)
    }

    /// Takes the flights whose keys `purged` holds for out of the table, so
    /// that requests from now on start new ones; the detached flights still
    /// land for the followers they have. Returns how many there were.
    pub(crate) fn detach(&self, purged: impl Fn(&Key) -> bool) -> usize {
        let mut flights = self.lock();
        let before = flights.len();
        flights.retain(|key, _| !purged(key));
        self.meter.flights(flights.len());
        before - flights.len()
    }

    /// Takes the flight for `key` out of the table if it is the one whose
    /// answer streams as `streamed`: a purge known here drops that answer,
    /// so callers from now on must start a new flight, as
    /// [`detach`](Self::detach) makes them for the purges this process
    /// sends (a purge by tag, or one from another process, names no
    /// flight). Its callers so far read on.
    pub(crate) fn detach_stream(&self, key: &Key, streamed: &Arc<Streamed>) {
        let mut flights = self.lock();
        let same = flights.get(key).is_some_and(|flight| {
            matches!(flight.slot.get(), Some(Some(Landing::Streaming(s))) if Arc::ptr_eq(s, streamed))
        });
        if same {
            flights.remove(key);
            self.meter.flights(flights.len());
        }
    }

    /// How many flights are under way.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The leader's hold on its table entry. Dropping it without landing removes
/// the entry and tells every follower the flight was abandoned.
#[derive(Debug)]
pub(crate) struct FlightGuard {
    table: FlightTable,
    key: Key,
    flight: Arc<Flight>,
    started: Started,
}

impl FlightGuard {
    /// Removes the flight from the table, then tells its followers how it
    /// ended. In that order: a request arriving after the answer must start a
    /// new flight (or find the stored answer), never join a finished one.
    pub(crate) fn land(self, landing: Landing) {
        self.remove();
        self.landed();
        self.flight.settle(Some(landing));
    }

    /// Tells the followers how the flight is answered while it goes on:
    /// the flight stays in the table, so that callers that come while its
    /// body arrives join it, until the guard is dropped or
    /// [`close`](Self::close)d.
    pub(crate) fn stream(&self, landing: Landing) {
        self.landed();
        self.flight.settle(Some(landing));
    }

    /// Reports the landing: how long the flight took, and in its span how
    /// many followers it has.
    fn landed(&self) {
        self.table.meter.flight(self.started);
        if let Some(span) = self.flight.span.get() {
            let followers = self.flight.followers.load(Ordering::Relaxed);
            span.record("coalesce.followers", followers as u64);
        }
    }

    /// Makes `span` the flight's, for its followers to follow from, if it
    /// is recorded.
    pub(crate) fn trace(&self, span: &tracing::Span) {
        if !span.is_disabled() {
            let _ = self.flight.span.set(span.clone());
        }
    }

    /// Takes the flight out of the table: callers from now on start a new
    /// one.
    pub(crate) fn close(&self) {
        self.remove();
    }

    /// Where the flight's work marks it as made for one variant only
    /// (before it lands, or streams).
    pub(crate) fn only(&self) -> Arc<OnceLock<Varied>> {
        self.flight.only.clone()
    }

    /// Resolves when no follower is waiting any more.
    pub(crate) async fn followers_gone(&self) {
        loop {
            let gone = self.flight.gone.notified();
            if self.flight.followers.load(Ordering::Acquire) == 0 {
                return;
            }
            // Created before the check, so a drop to zero after it still wakes us.
            gone.await;
        }
    }

    /// Removes the flight from the table if nobody follows it. Checked under
    /// the table lock, so no follower can join between the check and the removal.
    pub(crate) fn abandon_if_unfollowed(&self) -> bool {
        let mut flights = self.table.lock();
        if self.flight.followers.load(Ordering::Acquire) > 0 {
            return false;
        }
        self.remove_locked(&mut flights);
        true
    }

    fn remove(&self) {
        self.remove_locked(&mut self.table.lock());
    }

    fn remove_locked(&self, flights: &mut HashMap<Key, Arc<Flight>>) {
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            flights.remove(&self.key);
            self.table.meter.flights(flights.len());
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.remove();
        // A no-op after `land`: the slot is written once.
        self.flight.settle(None);
        // Whatever the flight stored is in by now.
        self.table.meter.near_cache();
    }
}

#[cfg(test)]
mod tests;

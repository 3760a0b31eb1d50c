//! An entry's life in storage: how long it is fresh, may then be served
//! stale, and is kept for revalidation, and what that makes of it now.

use super::Entry;
use std::time::{Duration, SystemTime};

/// An entry's lifetime in storage, counted from the time it was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Life {
    /// Fresh for this long (above zero).
    pub(crate) fresh: Duration,
    /// Then, for this long, it may be served stale while it is refreshed.
    pub(crate) stale: Duration,
    /// After its freshness, for this long, it may be served stale instead
    /// of an error from the origin (stale-if-error).
    pub(crate) if_error: Duration,
    /// How long the origin took to make it: what an early refresh expects
    /// the next one to take (XFetch's delta).
    pub(crate) took: Duration,
    /// Past its windows, how much longer it is kept for revalidation only
    /// (never served without a `304` that renews it): zero for an answer
    /// without validators.
    pub(crate) retain: Duration,
}

impl Life {
    /// Not fresh at all: not stored.
    pub(crate) const NONE: Life = Life {
        fresh: Duration::ZERO,
        stale: Duration::ZERO,
        if_error: Duration::ZERO,
        took: Duration::ZERO,
        retain: Duration::ZERO,
    };

    /// How long a backend keeps the entry: fresh, then stale (while
    /// refreshed, or instead of an error, whichever is longer), then for
    /// revalidation only.
    pub(crate) fn kept(&self) -> Duration {
        self.fresh
            .saturating_add(self.stale.max(self.if_error))
            .saturating_add(self.retain)
    }

    /// Whether an entry with this life is stored at all: fresh for a
    /// while, or kept to be revalidated.
    pub(crate) fn stores(&self) -> bool {
        !self.fresh.is_zero() || !self.retain.is_zero()
    }
}

impl Entry {
    /// Whether the entry's freshness is over (it is kept for a stale
    /// window). An entry without stale windows is never stale (the backend
    /// keeps it only while it is fresh), and costs no look at the clock.
    pub(crate) fn is_stale(&self) -> bool {
        match self.life() {
            Some(life)
                if !(life.stale.is_zero() && life.if_error.is_zero() && life.retain.is_zero()) =>
            {
                self.resident(SystemTime::now()) >= life.fresh
            }
            _ => false,
        }
    }

    /// How an entry held in memory may answer a request now: `Hit` while
    /// fresh, `Stale` in its stale-while-revalidate window, `None` past it
    /// (then it may only stand in for an error, which a flight decides).
    pub(crate) fn serve_as(&self) -> Option<crate::Outcome> {
        if !self.is_stale() {
            Some(crate::Outcome::Hit)
        } else if self.may_serve_stale() {
            Some(crate::Outcome::Stale)
        } else {
            None
        }
    }

    /// Whether a stale entry may still be served while it is refreshed (in
    /// its stale-while-revalidate window); past that, it may only stand in
    /// for an error.
    pub(crate) fn may_serve_stale(&self) -> bool {
        self.life().is_some_and(|life| {
            self.resident(SystemTime::now()) < life.fresh.saturating_add(life.stale)
        })
    }

    /// Whether the entry may stand in for an error from the origin now (in
    /// its stale-if-error window).
    pub(crate) fn may_serve_on_error(&self) -> bool {
        self.life().is_some_and(|life| {
            self.resident(SystemTime::now()) < life.fresh.saturating_add(life.if_error)
        })
    }

    /// Its freshness left in whole seconds, rounded down: negative once
    /// stale, from -1 on (the `ttl` of `Cache-Status`); `None` if not known.
    pub(crate) fn ttl_secs(&self) -> Option<i64> {
        let life = self.life()?;
        let resident = self.resident(SystemTime::now());
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Some(match life.fresh.checked_sub(resident) {
            Some(left) if !left.is_zero() => secs(left),
            _ => {
                let over = resident - life.fresh;
                let partial = over.subsec_nanos() > 0 || over.is_zero();
                -secs(over).saturating_add(i64::from(partial))
            }
        })
    }

    /// How long it has been stored at `now` (zero if never, or if the clock
    /// went back).
    fn resident(&self, now: SystemTime) -> Duration {
        self.inner
            .stored
            .and_then(|s| now.duration_since(s.at).ok())
            .unwrap_or_default()
    }

    /// Its lifetime in storage, if known (entries the layer stores know it;
    /// ones made by [`stored`](Self::stored) or read from an older format
    /// do not).
    pub(crate) fn life(&self) -> Option<Life> {
        self.inner.stored.and_then(|s| s.life)
    }

    /// How much of its freshness is left at `now`: `None` if it was never
    /// stored or its lifetime is not known, zero once it is stale.
    pub fn fresh_for(&self, now: SystemTime) -> Option<Duration> {
        let life = self.life()?;
        Some(life.fresh.saturating_sub(self.resident(now)))
    }

    /// How long it has been stale at `now` (zero while fresh): `None` if it
    /// was never stored or its lifetime is not known.
    pub(crate) fn stale_for(&self, now: SystemTime) -> Option<Duration> {
        let life = self.life()?;
        Some(self.resident(now).saturating_sub(life.fresh))
    }

    /// When the entry was stored, if it was.
    pub fn stored_at(&self) -> Option<SystemTime> {
        self.inner.stored.map(|s| s.at)
    }

    /// The entry's age at `now` (RFC 9111 §4.2.3, simplified for a cache
    /// that stores a response as it arrives): the `Age` the origin's response
    /// already had, plus the time since it was stored. `None` for an entry
    /// that was never stored. A clock that went backwards counts as no time.
    pub fn age(&self, now: SystemTime) -> Option<Duration> {
        let stored = self.inner.stored?;
        let resident = now.duration_since(stored.at).unwrap_or_default();
        Some(stored.initial.saturating_add(resident))
    }
}

//! Where answers are stored between flights, how flights in different
//! processes exclude each other, and how purges reach them all: the
//! [`Store`], [`Leases`] and [`Invalidation`] traits, which together make a
//! [`Backend`].
//!
//! The layer owns the request path — flights, followers, policy, the bounds
//! and breaker around every backend call — and asks a backend only to find
//! and keep entries (`Store`) and to lease keys and announce how their
//! flights ended (`Leases`). Storage and exclusion are two traits, as
//! Pingora keeps its cache lock apart from its storage, and neither has a
//! default method: a backend states what it does for each, so it cannot
//! lose exclusion, or its near cache, by forgetting a method.
//! [`MemoryBackend`] is the embedded default; [`RedisBackend`] shares
//! entries and leases between processes.
//!
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod streams;
mod watch;

pub use streams::{StreamEnd, StreamRead, Streams};
pub use watch::{Announcer, Notice, Watch};

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisBackend, RedisBackendBuilder};
pub use memory::{MemoryBackend, MemoryBackendBuilder};

use crate::{Entry, Found, Key};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

/// The future a [`Backend`] returns.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send + 'a>>;

/// What the layer is configured with: a [`Store`] with its [`Leases`].
/// Implemented for every type that implements both.
///
/// # The contract
/// - Every method may fail with a [`BackendError`]; the layer then goes on
///   without the backend for that step (and counts it). No method may
///   panic on bad data: a stored value that cannot be read is a miss.
/// - The layer bounds every call by `backend_timeout`; a backend need not,
///   but must not hold locks across its own `.await`s that a timed-out call
///   would leave held.
/// - A `Store` keeps an entry no longer than the `ttl` it was stored with,
///   and `get_local` / `lookup` return only entries still within it.
/// - A backend private to one process implements `Leases` by granting
///   every lease (its layer's flight table already allows one flight per
///   key), announcing nothing (`watch` is `None`), and storing the answer of
///   a [`Completion::Stored`] in `complete`. [`MemoryBackend`] does exactly
///   that. A backend shared by processes must give a lease to one token at a
///   time, check the token on `renew` and `complete`, and wake the
///   [`Watch`]es of other processes when a flight completes.
pub trait Backend: Store + Leases + Invalidation + Streams {}

impl<T: Store + Leases + Invalidation + Streams> Backend for T {}

/// Where entries are kept, shared by the services of one layer (and, for a
/// distributed store, by every process that uses it).
///
/// # Variants
/// A primary key (what the extractor made) holds an answer, or — once its
/// resource's answers vary (RFC 9111 §4.1) — an index: the request headers
/// they vary on ([`Found::Variants`]); each variant's answer is stored
/// under a [selected](Key::selected) key. Storing under a selected key
/// (here or through [`Leases::complete`]) records the variant in its primary
/// key's index, which keeps at most a bounded number of them, the least
/// recently used going first, and drops an answer stored under the primary
/// key itself. Storing under a primary key drops its index.
pub trait Store: Send + Sync + 'static {
    /// What this process already holds in memory under `key`, without
    /// waiting.
    ///
    /// Called on every keyed request before a flight is joined, so it must be
    /// cheap; a store that keeps nothing in process memory returns `None`
    /// (then every hit is a flight that calls [`find`](Self::find)).
    fn find_local(&self, key: &Key) -> Option<Found>;

    /// What is stored under `key`, if it is still within its TTL: for a
    /// primary key, an answer or its variants' index; for a selected key,
    /// an answer (which counts as a use of it). Called by a flight's leader
    /// only, never by its followers.
    fn find<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<Found>>;

    /// Stores `entry` under `key` for `ttl` (nothing for a zero `ttl`),
    /// replacing what was there.
    fn store<'a>(&'a self, key: &'a Key, entry: Entry, ttl: Duration) -> BackendFuture<'a, ()>;

    /// The answer this process holds under `key`: [`find_local`](Self::find_local)'s,
    /// if it is one.
    fn get_local(&self, key: &Key) -> Option<Entry> {
        self.find_local(key)?.into_entry()
    }

    /// The answer stored under `key`: [`find`](Self::find)'s, if it is one.
    fn lookup<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<Entry>> {
        Box::pin(async move { Ok(self.find(key).await?.and_then(Found::into_entry)) })
    }

    /// How much this store holds in this process's memory (what
    /// [`find_local`](Self::find_local) answers from), for the near-cache
    /// gauges of the `metrics` feature. Read as flights end, so it must be
    /// cheap, and may lag (by what expired since, say). `None`, the
    /// default: nothing held, or not counted.
    fn local_size(&self) -> Option<LocalSize> {
        None
    }
}

/// What a [`Store`] holds in this process's memory: see
/// [`Store::local_size`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalSize {
    /// Entries held (answers, and variants' indexes).
    pub entries: u64,
    /// Their bytes: bodies, headers and keys.
    pub bytes: u64,
}

impl LocalSize {
    /// `entries` entries of `bytes` bytes in all.
    pub fn new(entries: u64, bytes: u64) -> Self {
        Self { entries, bytes }
    }
}

/// How flights for one key in different processes exclude each other: the
/// key's lease, held by one [`LeaseToken`] at a time, and the news of how
/// its flight ended. See [`Backend`] for what a backend private
/// to one process does here.
pub trait Leases: Send + Sync + 'static {
    /// Tries to take the lease on `key` for `token`, for `lease`:
    /// [`TryLock::Acquired`] means this flight is the one leader of `key`
    /// among every process sharing the backend, until the lease ends or is
    /// released. A backend should refuse it ([`TryLock::Held`]) while an
    /// answer (or, under a primary key, a variants' index) is stored under
    /// `key`, so that a flight that missed the value
    /// just before another process completed takes that answer instead of
    /// calling the origin again, and answer [`TryLock::Pass`] while `key` is
    /// marked pass-through by a [`Completion::Pass`].
    ///
    /// `refresh` is `Some(at)` when the flight means to replace the stored
    /// answer it found stale, the one [stored](crate::Entry::stored_at) at
    /// `at`: then the lease is granted while that answer (and no other) is
    /// stored, as if none were — so one flight among every process
    /// refreshes it. While another answer is stored, refuse as above; a
    /// backend with a near cache should then make that answer the one its
    /// next [`lookup`](Store::lookup) returns, since the flight looks again.
    fn try_lock<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        lease: Duration,
        refresh: Option<SystemTime>,
    ) -> BackendFuture<'a, TryLock>;

    /// Extends the lease to `lease` from now, only if `token` still holds it.
    /// `false` means the lease was lost: another flight may lead now.
    fn renew<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        lease: Duration,
    ) -> BackendFuture<'a, bool>;

    /// Whether these leases are shared with other processes (a store such
    /// as Redis). A flight that stores nothing — a ttl of zero — takes the
    /// lease only then, so that instances still coalesce with each other:
    /// the answer reaches the waiting processes in its completion, or as a
    /// stream. The default, `false`, suits a backend private to one
    /// process, whose flight table coalesces already: there a lease for an
    /// answer that is not stored would only cost.
    fn shares_leases(&self) -> bool {
        false
    }

    /// A [`Watch`] that fires when a flight for `key` in another process may
    /// have ended; `None` for a backend private to one process.
    ///
    /// Once this returns, a completion is not missed: look up the entry after
    /// the watch is in place, then wait on it.
    fn watch<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<Watch>>;

    /// Ends the flight led under `token`, as one step — only while `token`
    /// still holds the lease: does what `completion` says (store the
    /// answer, or mark the key pass-through), tells the waiting processes
    /// (whose [`Watch`]es report the matching [`Notice`]), and releases the
    /// lease. [`Completed::Lost`] means the lease had been lost and nothing
    /// was changed: a leader that lost its lease never overwrites the
    /// answer or the lock of the one that followed. [`Completed::NotStored`]
    /// means an answer that was to be stored was not (a purge came during
    /// its fill, or writing it failed), though the lease was ended.
    fn complete<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        completion: Completion,
    ) -> BackendFuture<'a, Completed>;
}

/// How purges are ordered and told (see [`Purger`](crate::Purger)): each
/// takes a position in one purge order that every process sharing the
/// backend follows, and an entry is purged when a purge of its key, its
/// resource or one of its tags has a later position than its fill's start.
///
/// The layer judges every entry a [`Store::lookup`] returns with
/// [`purged`](Self::purged), and replaces a purged one as if it were not
/// there (a lease asked for with it as the `refresh` version); it stores
/// no answer that a purge landed on during its fill. [`Store::get_local`],
/// the hit path, must itself return no purged entry. A backend shared by
/// processes should also refuse, in [`Leases::complete`], to store an
/// answer a purge of its key or resource in another process came after
/// ([`Entry::fill_position`]), which this process may not have heard of
/// yet.
pub trait Invalidation: Send + Sync + 'static {
    /// Records `purge` after every purge recorded before it, stops serving
    /// what it names in this process, and tells the other processes
    /// sharing the backend; resolves once it is recorded and announced.
    fn purge<'a>(&'a self, purge: &'a crate::Purge) -> BackendFuture<'a, crate::Purged>;

    /// The position up to which this process knows every purge: a fill
    /// notes it before it calls the origin.
    fn purge_position(&self) -> crate::PurgePosition;

    /// The position of the latest purge known that drops `entry`, stored
    /// under `key`; `None` if none does. An entry filled in an earlier
    /// [epoch](crate::PurgePosition) than the backend's is dropped.
    fn purged(&self, key: &Key, entry: &Entry) -> Option<crate::PurgePosition>;
}

/// What [`Leases::try_lock`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TryLock {
    /// The lease is this flight's: it leads the key.
    Acquired,
    /// Another flight holds the lease, or an answer is stored: wait, or
    /// look again.
    Held,
    /// The key's answers cannot be shared (another process found so, see
    /// [`Completion::Pass`]): call the origin without a lease.
    Pass,
}

impl TryLock {
    /// Whether the lease was acquired.
    pub fn is_acquired(self) -> bool {
        self == TryLock::Acquired
    }
}

/// How a leased flight ends, for [`Leases::complete`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Completion {
    /// The answer, stored for `ttl`; waiting processes find it (small
    /// answers come with the message, as [`Notice::LookAgain`] after the
    /// backend kept them near).
    Stored {
        /// The answer.
        entry: Entry,
        /// How long it is stored.
        ttl: Duration,
    },
    /// An answer for the flight's waiting processes only, never stored
    /// (a server error, a gRPC error status): they get it as
    /// [`Notice::Answer`] when it is small enough to travel in the message,
    /// and otherwise take the lease over.
    Shared(Entry),
    /// The answer may not be shared (private, or too large): waiting
    /// processes get [`Notice::Pass`] and call the origin themselves, at
    /// once; for `ttl` (if not zero) later flights get [`TryLock::Pass`].
    /// An answer stored under the key (a stale one being refreshed) is
    /// removed: it must not be served again.
    Pass {
        /// How long the key is marked pass-through.
        ttl: Duration,
    },
    /// Nothing to hand on (the flight failed or was abandoned): the lease
    /// is released, and waiting processes look again and may take it.
    Released,
}

/// What came of [`Leases::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Completed {
    /// As the [`Completion`] said: the answer stored if it was to be, the
    /// waiting processes told, the lease released.
    Done,
    /// The lease was ended and the waiting processes told, but the answer
    /// that was to be stored was not: a purge of it came during its fill
    /// (its data may predate the purge), or writing it failed. The waiting
    /// processes look again, as after [`Completion::Released`].
    NotStored,
    /// The lease had been lost (it ran out, and another flight may hold
    /// it): nothing was changed.
    Lost,
}

impl Completed {
    /// Whether the lease was still held, so the flight ended it.
    pub fn held(self) -> bool {
        self != Completed::Lost
    }
}

/// The proof of holding a lease: a random 128-bit value, unique to one flight.
#[derive(Clone, PartialEq, Eq)]
pub struct LeaseToken(String);

impl LeaseToken {
    /// A fresh token from the operating system's random source. The layer
    /// makes one per flight; backends only compare them.
    #[doc(hidden)]
    pub fn new() -> Result<Self, BackendError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|e| BackendError::msg(format!("no randomness for a lease token: {e}")))?;
        Ok(LeaseToken(
            bytes.iter().map(|b| format!("{b:02x}")).collect(),
        ))
    }

    /// The token as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only a prefix: enough to tell tokens apart in logs.
        write!(f, "LeaseToken({}…)", &self.0[..8])
    }
}

/// A backend operation that failed.
#[derive(Debug)]
pub struct BackendError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BackendError {
    /// An error with this message and cause.
    pub fn new(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An error with this message alone.
    pub fn msg(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

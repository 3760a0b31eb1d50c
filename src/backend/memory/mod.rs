//! The embedded backend: entries in this process's memory, bounded in count
//! and bytes, each expiring after its own TTL. Built on `moka`.

mod kept;
mod variants;

use super::{BackendFuture, Completion, Invalidation, LeaseToken, Leases, Store, TryLock, Watch};
use crate::purge::PurgeLog;
use crate::{Entry, Found, Key, Purge, Purged};
use kept::{Held, Kept, Live, PerEntryTtl, Stored};
use moka::sync::Cache;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keeps entries in process memory. The default backend.
///
/// Bounded by both a number of entries and a number of bytes (body, headers
/// and key). `moka` bounds one total weight, so each entry weighs at least
/// `max_bytes / max_entries`: the total weight can then stay within
/// `max_bytes` only while there are at most `max_entries` entries, and the
/// bytes held never exceed the total weight.
///
/// Cloning is cheap and the clones share one store.
#[derive(Clone)]
pub struct MemoryBackend {
    cache: Cache<Key, Stored>,
    /// The purges it judges entries against: its own, or (as a
    /// `RedisBackend`'s near cache) every process's.
    log: Arc<PurgeLog>,
    /// Held while a purge takes its position and is recorded, so that
    /// positions are recorded in order.
    purging: Arc<Mutex<()>>,
    /// The resources with an entry stored, and until when at the latest:
    /// a write to any other needs no purge record. `None` as a
    /// `RedisBackend`'s near cache, whose presence marks are in Redis.
    live: Option<Arc<Mutex<Live>>>,
    /// The most variants kept per primary key.
    max_variants: usize,
    /// How many entries and bytes it holds.
    held: Arc<Held>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("entries", &self.cache.entry_count())
            .field("weight", &self.cache.weighted_size())
            .finish()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// At most 10,000 entries and 64 MiB.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Sets the bounds before building.
    pub fn builder() -> MemoryBackendBuilder {
        MemoryBackendBuilder {
            max_entries: 10_000,
            max_bytes: 64 * 1024 * 1024,
            max_variants: DEFAULT_MAX_VARIANTS,
        }
    }

    /// How many entries are held (eventually consistent, as in `moka`).
    pub fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Forgets the entry under `key`.
    pub fn invalidate(&self, key: &Key) {
        self.cache.invalidate(key);
    }
}

/// How many variants a primary key keeps by default: enough for the
/// spellings of `Accept-Encoding` that browsers send, by the dozen fewer
/// than a `Vary: User-Agent` would make.
pub(crate) const DEFAULT_MAX_VARIANTS: usize = 8;

/// Builds a [`MemoryBackend`].
#[derive(Debug, Clone)]
pub struct MemoryBackendBuilder {
    max_entries: u64,
    max_bytes: u64,
    max_variants: usize,
}

impl MemoryBackendBuilder {
    /// The most entries kept at once (at least 1).
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n.max(1);
        self
    }

    /// The most bytes kept at once (at least 1).
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n.max(1);
        self
    }

    /// The most variants (answers selected by the request headers their
    /// `Vary` names) kept per primary key, at least 1 (default 8): storing
    /// one more drops the least recently used.
    pub fn max_variants(mut self, n: usize) -> Self {
        self.max_variants = n.max(1);
        self
    }

    /// The backend.
    pub fn build(self) -> MemoryBackend {
        let floor = (self.max_bytes / self.max_entries).max(1);
        let held = Arc::new(Held::default());
        let gone = held.clone();
        let cache = Cache::builder()
            .max_capacity(self.max_bytes)
            .weigher(move |_: &Key, value: &Stored| {
                u32::try_from(value.bytes.max(floor)).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            // Every way an entry goes, an insert the cache refused included.
            .eviction_listener(move |_, value: Stored, _| gone.gone(&value))
            .build();
        MemoryBackend {
            cache,
            log: Arc::new(PurgeLog::new(PurgeLog::MAX_RECORDS)),
            purging: Arc::default(),
            live: Some(Arc::default()),
            max_variants: self.max_variants,
            held,
        }
    }
}

impl MemoryBackend {
    /// Forgets what is kept under `key`.
    pub(crate) fn remove(&self, key: &Key) {
        self.cache.invalidate(key);
    }

    /// Keeps `kept` under `key` for `ttl`, counted.
    fn put(&self, key: Key, kept: Kept, ttl: Duration) {
        let stored = Stored::new(&key, kept, ttl);
        self.held.kept(&stored);
        self.cache.insert(key, stored);
    }

    /// Keeps `entry` for `ttl` (nothing for zero, nor for an entry a purge
    /// landed on during its fill), at once; under a selected key, records
    /// the variant in its primary key's index.
    pub(crate) fn insert(&self, key: &Key, entry: Entry, ttl: Duration) {
        if ttl.is_zero() || self.log.purged(key, &entry).is_some() {
            return;
        }
        if let Some(live) = &self.live {
            crate::sync::lock(live).stored(key.resource_digest(), Instant::now() + ttl);
        }
        self.put(key.clone(), Kept::Entry(entry), ttl);
        if let Some(variants) = key.variants() {
            self.index(key, variants, ttl);
        }
    }

    /// The same cache, judging entries against `log` (a `RedisBackend`'s
    /// near cache, against every process's purges).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn judged_by(mut self, log: Arc<PurgeLog>) -> Self {
        self.log = log;
        // Redis keeps the presence marks; keeping them here too would only
        // cost every stored answer a lock.
        self.live = None;
        self
    }
}

impl Store for MemoryBackend {
    fn find_local(&self, key: &Key) -> Option<Found> {
        let entry = match self.cache.get(key)?.kept {
            Kept::Entry(entry) => entry,
            // Only a primary key holds an index.
            Kept::Index(index) if key.variants().is_none() => {
                return Some(Found::Variants(index.variants.clone()));
            }
            Kept::Index(_) => return None,
        };
        if self.log.purged(key, &entry).is_some() {
            self.cache.invalidate(key);
            return None;
        }
        if key.variants().is_some() {
            if let Some(Stored {
                kept: Kept::Index(index),
                ..
            }) = self.cache.get(&key.primary())
            {
                index.touch(key);
            }
        }
        Some(Found::Entry(entry))
    }

    fn find<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<Found>> {
        let found = self.find_local(key);
        Box::pin(std::future::ready(Ok(found)))
    }

    fn store<'a>(&'a self, key: &'a Key, entry: Entry, ttl: Duration) -> BackendFuture<'a, ()> {
        self.insert(key, entry, ttl);
        Box::pin(std::future::ready(Ok(())))
    }

    fn local_size(&self) -> Option<crate::LocalSize> {
        Some(self.held.size())
    }
}

/// Private to one process: every lease is granted (the layer's flight table
/// already allows one flight per key), there is nobody to announce to, and
/// a stored answer is kept.
impl Leases for MemoryBackend {
    fn try_lock<'a>(
        &'a self,
        _: &'a Key,
        _: &'a LeaseToken,
        _: Duration,
        _: Option<std::time::SystemTime>,
    ) -> BackendFuture<'a, TryLock> {
        Box::pin(std::future::ready(Ok(TryLock::Acquired)))
    }

    fn renew<'a>(&'a self, _: &'a Key, _: &'a LeaseToken, _: Duration) -> BackendFuture<'a, bool> {
        Box::pin(std::future::ready(Ok(true)))
    }

    fn watch<'a>(&'a self, _: &'a Key) -> BackendFuture<'a, Option<Watch>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn complete<'a>(
        &'a self,
        key: &'a Key,
        _: &'a LeaseToken,
        completion: Completion,
    ) -> BackendFuture<'a, super::Completed> {
        match completion {
            Completion::Stored { entry, ttl } => self.insert(key, entry, ttl),
            // The key's answers cannot be shared: a stale one must not stay.
            Completion::Pass { .. } => self.remove(key),
            Completion::Shared(_) | Completion::Released => {}
        }
        Box::pin(std::future::ready(Ok(super::Completed::Done)))
    }
}

/// Private to one process: no other process waits on its flights, so
/// there is no stream to open.
impl super::Streams for MemoryBackend {
    fn open_stream<'a>(
        &'a self,
        _: &'a Key,
        _: &'a LeaseToken,
        _: &'a Entry,
        _: Duration,
    ) -> BackendFuture<'a, bool> {
        Box::pin(std::future::ready(Ok(false)))
    }

    fn append_stream<'a>(
        &'a self,
        _: &'a Key,
        _: &'a LeaseToken,
        _: u64,
        _: bytes::Bytes,
        _: (Duration, usize),
    ) -> BackendFuture<'a, bool> {
        Box::pin(std::future::ready(Ok(false)))
    }

    fn end_stream<'a>(
        &'a self,
        _: &'a Key,
        _: &'a LeaseToken,
        _: super::StreamEnd,
        _: Duration,
    ) -> BackendFuture<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn read_stream<'a>(
        &'a self,
        _: &'a Key,
        _: Option<&'a str>,
        _: u64,
        _: usize,
    ) -> BackendFuture<'a, Option<super::StreamRead>> {
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// Private to one process: the purge order is this backend's own, and
/// there is nobody to tell.
impl Invalidation for MemoryBackend {
    fn purge<'a>(&'a self, purge: &'a Purge) -> BackendFuture<'a, Purged> {
        if let Purge::Written(key) = purge {
            // Nothing of the resource stored (the layer records the purge
            // of a resource with a flight under way itself): nothing to
            // purge, nothing recorded.
            let stored = self
                .live
                .as_ref()
                .is_none_or(|live| crate::sync::lock(live).has(&key.resource_digest()));
            if !stored {
                let position = self.log.position();
                return Box::pin(std::future::ready(Ok(Purged::at(position, false))));
            }
        }
        let position = {
            let _order = crate::sync::lock(&self.purging);
            let position = self.log.latest() + 1;
            self.log.record(position, purge.target());
            position
        };
        if let Purge::Key(key) = purge {
            self.cache.invalidate(key);
        }
        // One epoch, 0: this order lives and dies with the process.
        let position = crate::PurgePosition::new(0, position);
        Box::pin(std::future::ready(Ok(Purged::at(position, false))))
    }

    fn purge_position(&self) -> crate::PurgePosition {
        self.log.position()
    }

    fn purged(&self, key: &Key, entry: &Entry) -> Option<crate::PurgePosition> {
        self.log.purged(key, entry)
    }
}

#[cfg(test)]
mod tests;

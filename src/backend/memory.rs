//! The embedded backend: entries in this process's memory, bounded in count
//! and bytes, each expiring after its own TTL. Built on `moka`.

use super::{BackendFuture, Completion, Invalidation, LeaseToken, Leases, Store, TryLock, Watch};
use crate::purge::PurgeLog;
use crate::{Entry, Found, Key, Purge, Purged, Variants};
use moka::sync::Cache;
use std::collections::VecDeque;
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
}

/// The resources with an entry stored (by digest), each with the latest
/// expiry of its entries. Pruned of expired ones as it grows, so it holds
/// about as many resources as the cache holds entries.
#[derive(Debug, Default)]
struct Live {
    until: std::collections::HashMap<[u8; 16], Instant>,
    prune_at: usize,
}

impl Live {
    fn stored(&mut self, resource: [u8; 16], until: Instant) {
        let at = self.until.entry(resource).or_insert(until);
        *at = (*at).max(until);
        if self.until.len() > self.prune_at {
            let now = Instant::now();
            self.until.retain(|_, until| *until > now);
            self.prune_at = (self.until.len() * 2).max(4096);
        }
    }

    fn has(&self, resource: &[u8; 16]) -> bool {
        self.until
            .get(resource)
            .is_some_and(|until| *until > Instant::now())
    }
}

#[derive(Clone)]
struct Stored {
    kept: Kept,
    ttl: Duration,
}

/// What a key holds: an answer, or (a primary key) its variants' index.
#[derive(Clone)]
enum Kept {
    Entry(Entry),
    Index(Arc<Index>),
}

/// The variants of a primary key: the headers they vary on, and the
/// selected keys stored, the most recently used first.
struct Index {
    variants: Variants,
    keys: Mutex<VecDeque<Key>>,
}

impl Index {
    /// `key` used: first in line.
    fn touch(&self, key: &Key) {
        let mut keys = crate::sync::lock(&self.keys);
        if keys.front() != Some(key) {
            if let Some(at) = keys.iter().position(|k| k == key) {
                keys.remove(at);
                keys.push_front(key.clone());
            }
        }
    }
}

impl Stored {
    fn weight(&self, key: &Key) -> usize {
        key.len()
            + match &self.kept {
                Kept::Entry(entry) => entry.weight(),
                Kept::Index(index) => {
                    let keys = crate::sync::lock(&index.keys);
                    64 + keys.iter().map(Key::len).sum::<usize>()
                }
            }
    }
}

struct PerEntryTtl;

impl moka::Expiry<Key, Stored> for PerEntryTtl {
    fn expire_after_create(&self, _: &Key, value: &Stored, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _: &Key,
        value: &Stored,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
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
        let cache = Cache::builder()
            .max_capacity(self.max_bytes)
            .weigher(move |key: &Key, value: &Stored| {
                let bytes = value.weight(key) as u64;
                u32::try_from(bytes.max(floor)).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        MemoryBackend {
            cache,
            log: Arc::new(PurgeLog::new(PurgeLog::MAX_RECORDS)),
            purging: Arc::default(),
            live: Some(Arc::default()),
            max_variants: self.max_variants,
        }
    }
}

impl MemoryBackend {
    /// Forgets what is kept under `key`.
    pub(crate) fn remove(&self, key: &Key) {
        self.cache.invalidate(key);
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
        let kept = Kept::Entry(entry);
        self.cache.insert(key.clone(), Stored { kept, ttl });
        if let Some(variants) = key.variants() {
            self.index(key, variants, ttl);
        }
    }

    /// Records the variant stored under the selected `key` in its primary
    /// key's index (a new one if the primary key held an answer, or an
    /// index of other headers), first in line; drops the least recently
    /// used past the bound. The index lives as long as its longest-lived
    /// variant might.
    fn index(&self, key: &Key, variants: &Variants, ttl: Duration) {
        let primary = key.primary();
        let current = self.cache.get(&primary);
        let (index, kept_for) = match current {
            Some(Stored {
                kept: Kept::Index(index),
                ttl: kept_for,
            }) if index.variants == *variants => (index, kept_for),
            _ => (
                Arc::new(Index {
                    variants: variants.clone(),
                    keys: Mutex::default(),
                }),
                Duration::ZERO,
            ),
        };
        let dropped = {
            let mut keys = crate::sync::lock(&index.keys);
            keys.retain(|k| k != key);
            keys.push_front(key.clone());
            let kept = keys.len().min(self.max_variants);
            keys.split_off(kept)
        };
        for key in dropped {
            self.cache.invalidate(&key);
        }
        // Its expiry renewed: it must outlive the variant just stored.
        let kept = Kept::Index(index);
        let ttl = ttl.max(kept_for);
        self.cache.insert(primary, Stored { kept, ttl });
    }

    /// Keeps `variants` as the index of the primary key `key` for `ttl`,
    /// as another process's store holds it (a `RedisBackend`'s near cache),
    /// unless an index of the same headers is kept already.
    pub(crate) fn insert_index(&self, key: &Key, variants: Variants, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        if let Some(Stored {
            kept: Kept::Index(index),
            ..
        }) = self.cache.get(key)
        {
            if index.variants == variants {
                return;
            }
        }
        let index = Arc::new(Index {
            variants,
            keys: Mutex::default(),
        });
        let kept = Kept::Index(index);
        self.cache.insert(key.clone(), Stored { kept, ttl });
    }

    /// The same cache, judging entries against `log` (a `RedisBackend`'s
    /// near cache, against every process's purges).
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
    ) -> BackendFuture<'a, bool> {
        match completion {
            Completion::Stored { entry, ttl } => self.insert(key, entry, ttl),
            // The key's answers cannot be shared: a stale one must not stay.
            Completion::Pass { .. } => self.remove(key),
            Completion::Shared(_) | Completion::Released => {}
        }
        Box::pin(std::future::ready(Ok(true)))
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
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode, Version};

    fn entry(body: &'static [u8]) -> Entry {
        Entry::new(
            StatusCode::OK,
            Version::HTTP_11,
            HeaderMap::new(),
            Bytes::from_static(body),
            None,
        )
    }

    #[tokio::test]
    async fn stores_and_finds_until_the_ttl_passes() {
        let b = MemoryBackend::new();
        let k = Key::from("a");
        b.store(&k, entry(b"x"), Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(b.lookup(&k).await.unwrap().unwrap().body(), "x");
        std::thread::sleep(Duration::from_millis(150));
        assert!(b.lookup(&k).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn entry_count_is_bounded() {
        let b = MemoryBackend::builder()
            .max_entries(10)
            .max_bytes(1 << 20)
            .build();
        for i in 0..100 {
            let k = Key::from(format!("k{i}"));
            b.store(&k, entry(b"x"), Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert!(b.entry_count() <= 10, "held {}", b.entry_count());
    }

    #[tokio::test]
    async fn bytes_are_bounded() {
        static BIG: [u8; 1000] = [7; 1000];
        let b = MemoryBackend::builder()
            .max_entries(1000)
            .max_bytes(10_000)
            .build();
        for i in 0..100 {
            let k = Key::from(format!("k{i}"));
            b.store(&k, entry(&BIG), Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert!(b.entry_count() <= 10, "held {}", b.entry_count());
    }

    #[tokio::test]
    async fn zero_ttl_stores_nothing() {
        let b = MemoryBackend::new();
        let k = Key::from("a");
        b.store(&k, entry(b"x"), Duration::ZERO).await.unwrap();
        assert!(b.get_local(&k).is_none());
    }
}

//! The embedded backend: entries in this process's memory, bounded in count
//! and bytes, each expiring after its own TTL. Built on `moka`.

use super::{BackendFuture, Completion, Invalidation, LeaseToken, Leases, Store, TryLock, Watch};
use crate::purge::PurgeLog;
use crate::{Entry, Key, Purge, Purged};
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
    entry: Entry,
    ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<Key, Stored> for PerEntryTtl {
    fn expire_after_create(&self, _: &Key, value: &Stored, _: Instant) -> Option<Duration> {
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

/// Builds a [`MemoryBackend`].
#[derive(Debug, Clone)]
pub struct MemoryBackendBuilder {
    max_entries: u64,
    max_bytes: u64,
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

    /// The backend.
    pub fn build(self) -> MemoryBackend {
        let floor = (self.max_bytes / self.max_entries).max(1);
        let cache = Cache::builder()
            .max_capacity(self.max_bytes)
            .weigher(move |key: &Key, value: &Stored| {
                let bytes = (key.len() + value.entry.weight()) as u64;
                u32::try_from(bytes.max(floor)).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        MemoryBackend {
            cache,
            log: Arc::new(PurgeLog::new(PurgeLog::MAX_RECORDS)),
            purging: Arc::default(),
            live: Some(Arc::default()),
        }
    }
}

impl MemoryBackend {
    /// Forgets what is kept under `key`.
    pub(crate) fn remove(&self, key: &Key) {
        self.cache.invalidate(key);
    }

    /// Keeps `entry` for `ttl` (nothing for zero, nor for an entry a purge
    /// landed on during its fill), at once.
    pub(crate) fn insert(&self, key: &Key, entry: Entry, ttl: Duration) {
        if !ttl.is_zero() && self.log.purged(key, &entry).is_none() {
            if let Some(live) = &self.live {
                crate::sync::lock(live).stored(key.resource_digest(), Instant::now() + ttl);
            }
            self.cache.insert(key.clone(), Stored { entry, ttl });
        }
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
    fn get_local(&self, key: &Key) -> Option<Entry> {
        let entry = self.cache.get(key)?.entry;
        if self.log.purged(key, &entry).is_some() {
            self.cache.invalidate(key);
            return None;
        }
        Some(entry)
    }

    fn lookup<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<Entry>> {
        let found = self.get_local(key);
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

//! What the cache holds under a key, how much it weighs and when it
//! expires, and which resources have something stored.

use super::variants::Index;
use crate::{Entry, Key};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The resources with an entry stored (by digest), each with the latest
/// expiry of its entries. Pruned of expired ones as it grows, so it holds
/// about as many resources as the cache holds entries.
#[derive(Debug, Default)]
pub(super) struct Live {
    pub(super) until: std::collections::HashMap<[u8; 16], Instant>,
    pub(super) prune_at: usize,
}

impl Live {
    pub(super) fn stored(&mut self, resource: [u8; 16], until: Instant) {
        let at = self.until.entry(resource).or_insert(until);
        *at = (*at).max(until);
        if self.until.len() > self.prune_at {
            let now = Instant::now();
            self.until.retain(|_, until| *until > now);
            self.prune_at = (self.until.len() * 2).max(4096);
        }
    }

    pub(super) fn has(&self, resource: &[u8; 16]) -> bool {
        self.until
            .get(resource)
            .is_some_and(|until| *until > Instant::now())
    }
}

#[derive(Clone)]
pub(super) struct Stored {
    pub(super) kept: Kept,
    pub(super) ttl: Duration,
    /// Its bytes when it was kept: what it weighs, and what it takes off
    /// the bytes held when it goes.
    pub(super) bytes: u64,
}

/// What a key holds: an answer, or (a primary key) its variants' index.
#[derive(Clone)]
pub(super) enum Kept {
    Entry(Entry),
    Index(Arc<Index>),
}

impl Stored {
    pub(super) fn new(key: &Key, kept: Kept, ttl: Duration) -> Self {
        let bytes = key.len()
            + match &kept {
                Kept::Entry(entry) => entry.weight(),
                Kept::Index(index) => {
                    let keys = crate::sync::lock(&index.keys);
                    64 + keys.iter().map(Key::len).sum::<usize>()
                }
            };
        Self {
            kept,
            ttl,
            bytes: bytes as u64,
        }
    }
}

/// How much the cache holds: counted as entries are kept and as the cache
/// lets them go (replaced, purged, evicted or expired), so reading it costs
/// two loads — the cache's own count needs its pending work run first, and
/// its weight counts small entries at the floor weight.
#[derive(Debug, Default)]
pub(super) struct Held {
    entries: AtomicU64,
    bytes: AtomicU64,
}

impl Held {
    pub(super) fn kept(&self, stored: &Stored) {
        self.entries.fetch_add(1, Relaxed);
        self.bytes.fetch_add(stored.bytes, Relaxed);
    }

    pub(super) fn gone(&self, stored: &Stored) {
        self.entries.fetch_sub(1, Relaxed);
        self.bytes.fetch_sub(stored.bytes, Relaxed);
    }

    pub(super) fn size(&self) -> crate::LocalSize {
        crate::LocalSize::new(self.entries.load(Relaxed), self.bytes.load(Relaxed))
    }
}

pub(super) struct PerEntryTtl;

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

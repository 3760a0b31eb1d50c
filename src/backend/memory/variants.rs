//! The variants index of a primary key (RFC 9111 §4.1): the request
//! headers its answers vary on and the selected keys stored, bounded, the
//! least recently used going first.

use super::kept::{Kept, Stored};
use super::MemoryBackend;
use crate::{Key, Variants};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The variants of a primary key: the headers they vary on, and the
/// selected keys stored, the most recently used first.
pub(super) struct Index {
    pub(super) variants: Variants,
    pub(super) keys: Mutex<VecDeque<Key>>,
}

impl Index {
    /// `key` used: first in line.
    pub(super) fn touch(&self, key: &Key) {
        let mut keys = crate::sync::lock(&self.keys);
        if keys.front() != Some(key) {
            if let Some(at) = keys.iter().position(|k| k == key) {
                keys.remove(at);
                keys.push_front(key.clone());
            }
        }
    }
}

impl MemoryBackend {
    /// Records the variant stored under the selected `key` in its primary
    /// key's index (a new one if the primary key held an answer, or an
    /// index of other headers), first in line; drops the least recently
    /// used past the bound. The index lives as long as its longest-lived
    /// variant might.
    pub(super) fn index(&self, key: &Key, variants: &Variants, ttl: Duration) {
        let primary = key.primary();
        let current = self.cache.get(&primary);
        let (index, kept_for) = match current {
            Some(Stored {
                kept: Kept::Index(index),
                ttl: kept_for,
                ..
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
        let ttl = ttl.max(kept_for);
        self.put(primary, Kept::Index(index), ttl);
    }

    /// Keeps `variants` as the index of the primary key `key` for `ttl`,
    /// as another process's store holds it (a `RedisBackend`'s near cache),
    /// unless an index of the same headers is kept already.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
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
        self.put(key.clone(), Kept::Index(index), ttl);
    }
}

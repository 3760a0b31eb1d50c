//! What every service of one layer shares: configuration, extractor, flight
//! table, backend, counters, pass-through memory, breaker and tasks; and the
//! decisions made from them alone (is this request keyed, does its key pass).

use crate::breaker::Breaker;
use crate::flight::FlightTable;
use crate::shutdown::Tasks;
use crate::stats::{Counters, Marks, Meter};
use crate::{CoalesceConfig, Key, KeyExtractor};
use http::Request;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

pub(crate) struct Shared<E> {
    pub(crate) config: CoalesceConfig,
    pub(crate) extractor: E,
    pub(crate) table: FlightTable,
    pub(crate) counters: Counters,
    /// The layer's series in the `metrics` facade (nothing without that
    /// feature).
    pub(crate) meter: Meter,
    /// Keys whose last answer could not be shared, for `pass_ttl`: requests
    /// for them go straight to the origin instead of queueing behind a flight
    /// whose answer they could not have (Varnish's hit-for-pass).
    pub(crate) passes: Option<Recent>,
    /// Keys whose last refresh failed, for a second: stale answers are
    /// served meanwhile, and not every request retries the origin.
    pub(crate) refresh_failed: Recent,
    /// Whether the backend is failing, and should be skipped for a while.
    pub(crate) breaker: Arc<Breaker>,
    /// The outcome header and `Cache-Status` the responses carry, if any.
    pub(crate) marks: Option<Arc<Marks>>,
    /// The flights and lease releases under way, for
    /// [`CoalesceLayer::shutdown`](crate::CoalesceLayer::shutdown).
    pub(crate) tasks: Tasks,
    /// Purges under way, which those asked for meanwhile share.
    pub(crate) merges: crate::purge::Merges,
}

/// A memory of keys for a while (those that pass, those whose refresh just
/// failed): a digest per key, never the key itself, so its size is bounded
/// by bytes however long keys are. Two keys with one digest only make the
/// second one remembered too: answers stay correct.
pub(crate) struct Recent {
    keys: moka::sync::Cache<u64, ()>,
    hasher: std::collections::hash_map::RandomState,
}

impl Recent {
    pub(crate) fn new(ttl: std::time::Duration, bytes: usize) -> Self {
        let entries = (bytes / CoalesceConfig::PASS_ENTRY_BYTES).max(1) as u64;
        Self {
            keys: moka::sync::Cache::builder()
                .max_capacity(entries)
                .time_to_live(ttl)
                .build(),
            hasher: Default::default(),
        }
    }

    fn digest(&self, key: &Key) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    pub(crate) fn contains(&self, key: &Key) -> bool {
        self.keys.contains_key(&self.digest(key))
    }

    pub(crate) fn insert(&self, key: &Key) {
        self.keys.insert(self.digest(key), ());
    }
}

impl<E> Shared<E> {
    /// Marks `res` as answered `outcome` (see [`mark`](crate::stats::mark)),
    /// and counts it by outcome.
    pub(crate) fn mark<B>(
        &self,
        res: http::Response<B>,
        outcome: crate::Outcome,
        ttl: Option<i64>,
    ) -> http::Response<B> {
        self.meter.response(outcome);
        crate::stats::mark(res, outcome, self.marks.as_deref(), ttl)
    }

    /// Whether `key` is remembered as pass-through.
    pub(crate) fn passes(&self, key: &Key) -> bool {
        self.passes.as_ref().is_some_and(|p| p.contains(key))
    }

    /// Whether a refresh of `key` failed within the last second.
    pub(crate) fn refresh_failed_lately(&self, key: &Key) -> bool {
        self.refresh_failed.contains(key)
    }

    /// Remembers `key` as pass-through for `pass_ttl` (if that is not zero).
    pub(crate) fn remember_pass(&self, key: &Key) {
        if let Some(passes) = &self.passes {
            passes.insert(key);
        }
    }

    /// What `extract`, a call of the extractor made outside the request path
    /// (to find what a purge or a write names), gives; a panic in it is no
    /// key.
    pub(crate) fn extracted(&self, extract: impl FnOnce(&E) -> Option<Key>) -> Option<Key> {
        catch_unwind(AssertUnwindSafe(|| extract(&self.extractor)))
            .ok()
            .flatten()
    }

    /// The request's key, or `None` if it bypasses: a layer that was shut
    /// down, a method that does not coalesce, a credential the extractor does not key, or no key from the
    /// extractor. An extractor that panics gives `None` too: the request
    /// then bypasses the layer rather than fail.
    pub(crate) fn key<B>(&self, req: &Request<B>) -> Option<Key>
    where
        E: KeyExtractor<B>,
    {
        let config = &self.config;
        if !config.methods.contains(req.method()) || self.tasks.closed() {
            return None;
        }
        let keyed = || {
            let headers = req.headers();
            // One pass to see whether any is there: most requests carry none.
            let unkeyed_credential = crate::conditions::has_any(headers, &config.credentials)
                && config
                    .credentials
                    .iter()
                    .any(|name| headers.contains_key(name) && !self.extractor.keys_header(name));
            if unkeyed_credential {
                return None;
            }
            let key = self.extractor.extract(req)?;
            Some(key.for_method(req.method()))
        };
        match catch_unwind(AssertUnwindSafe(keyed)) {
            Ok(key) => key,
            Err(panic) => {
                tracing::error!(
                    panic = %crate::error::panic_message(&*panic),
                    "key extractor panicked; the request bypasses the layer"
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_pass_memory_keeps_digests_within_its_byte_bound() {
        let bytes = 8 * CoalesceConfig::PASS_ENTRY_BYTES;
        let passes = Recent::new(Duration::from_secs(60), bytes);
        // Keys of 256 KiB each: what is kept is their digests, and no more
        // of them than the bound allows.
        let keys: Vec<Key> = (0..100u8).map(|i| Key::new(vec![i; 256 * 1024])).collect();
        for key in &keys {
            passes.insert(key);
        }
        passes.keys.run_pending_tasks();
        assert!(
            passes.keys.entry_count() <= 8,
            "{}",
            passes.keys.entry_count()
        );
        assert!(keys.iter().any(|k| passes.contains(k)));
        assert!(!passes.contains(&Key::new("never inserted")));
    }
}

//! [`CoalesceLayer`]: the value handed to `ServiceBuilder::layer` or
//! `axum::Router::layer`. It holds the state every service it makes shares:
//! configuration, extractor, flight table, backend and counters.

use crate::flight::FlightTable;
use crate::stats::Counters;
use crate::{CoalesceConfig, CoalesceService, ConfigError, HttpKey, Key, KeyExtractor, Stats};
use http::Request;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use tower_layer::Layer;

/// Applies request coalescing to the services it wraps.
///
/// Cloning is cheap, and every clone and every service made by any clone share
/// one flight table, backend and set of counters: two requests with the same
/// key coalesce whichever route or connection they arrive on. Keys are made
/// from the request as this layer sees it, so apply it where the whole path is
/// visible (the outermost router).
pub struct CoalesceLayer<E = HttpKey> {
    shared: Arc<Shared<E>>,
}

pub(crate) struct Shared<E> {
    pub(crate) config: CoalesceConfig,
    pub(crate) extractor: E,
    pub(crate) table: FlightTable,
    pub(crate) counters: Counters,
    /// Keys whose last answer could not be shared, for `pass_ttl`: requests
    /// for them go straight to the origin instead of queueing behind a flight
    /// whose answer they could not have (Varnish's hit-for-pass).
    pub(crate) passes: Option<Passes>,
    /// Whether the backend is failing, and should be skipped for a while.
    pub(crate) breaker: crate::breaker::Breaker,
}

/// The pass-through memory: a digest per key, never the key itself, so its
/// size is bounded by bytes however long keys are. Two keys with one digest
/// only make the second pass for a while: answers stay correct.
pub(crate) struct Passes {
    keys: moka::sync::Cache<u64, ()>,
    hasher: std::collections::hash_map::RandomState,
}

impl Passes {
    fn new(ttl: std::time::Duration, bytes: usize) -> Self {
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
    /// Whether `key` is remembered as pass-through.
    pub(crate) fn passes(&self, key: &Key) -> bool {
        self.passes.as_ref().is_some_and(|p| p.contains(key))
    }

    /// Remembers `key` as pass-through for `pass_ttl` (if that is not zero).
    pub(crate) fn remember_pass(&self, key: &Key) {
        if let Some(passes) = &self.passes {
            passes.insert(key);
        }
    }

    /// The request's key, or `None` if it bypasses: a method that does not
    /// coalesce, a credential the extractor does not key, or no key from the
    /// extractor. An extractor that panics gives `None` too: the request
    /// then bypasses the layer rather than fail.
    pub(crate) fn key<B>(&self, req: &Request<B>) -> Option<Key>
    where
        E: KeyExtractor<B>,
    {
        let config = &self.config;
        if !config.methods.contains(req.method()) {
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

impl CoalesceLayer {
    /// A layer keyed by the default [`HttpKey`] extractor.
    ///
    /// # Panics
    /// If the configuration is invalid (see [`CoalesceConfig::validate`]);
    /// [`builder`](Self::builder) returns the error instead.
    pub fn new(config: CoalesceConfig) -> Self {
        Self::builder(config)
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A layer with these settings, keyed by [`HttpKey`] unless the builder
    /// is given another [extractor](CoalesceLayerBuilder::extractor).
    ///
    /// ```
    /// use http::Request;
    /// use tower_coalesce::{CoalesceConfig, CoalesceLayer, Key};
    ///
    /// let by_path = |req: &Request<()>| Some(Key::new(req.uri().path().to_owned()));
    /// let layer = CoalesceLayer::builder(CoalesceConfig::new())
    ///     .extractor(by_path)
    ///     .build()
    ///     .expect("a valid configuration");
    /// ```
    pub fn builder(config: CoalesceConfig) -> CoalesceLayerBuilder<HttpKey> {
        CoalesceLayerBuilder {
            config,
            extractor: HttpKey::new(),
        }
    }
}

/// Builds a [`CoalesceLayer`]: its settings and its key extractor. From
/// [`CoalesceLayer::builder`].
#[derive(Debug, Clone)]
pub struct CoalesceLayerBuilder<E> {
    config: CoalesceConfig,
    extractor: E,
}

impl<E> CoalesceLayerBuilder<E> {
    /// Keys requests by `extractor` (a [`KeyExtractor`](crate::KeyExtractor),
    /// such as a closure) instead.
    pub fn extractor<E2>(self, extractor: E2) -> CoalesceLayerBuilder<E2> {
        CoalesceLayerBuilder {
            config: self.config,
            extractor,
        }
    }

    /// The layer, or why its configuration cannot work (see
    /// [`CoalesceConfig::validate`]).
    pub fn build(self) -> Result<CoalesceLayer<E>, ConfigError> {
        let CoalesceLayerBuilder { config, extractor } = self;
        config.validate()?;
        let passes =
            (!config.pass_ttl.is_zero()).then(|| Passes::new(config.pass_ttl, config.pass_memory));
        let breaker = crate::breaker::Breaker::new(config.backend_cooldown);
        Ok(CoalesceLayer {
            shared: Arc::new(Shared {
                breaker,
                config,
                extractor,
                table: FlightTable::default(),
                counters: Counters::default(),
                passes,
            }),
        })
    }
}

impl<E> CoalesceLayer<E> {
    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// How many flights are under way in this process. Zero once every burst
    /// has been answered.
    pub fn flights_in_progress(&self) -> usize {
        self.shared.table.len()
    }
}

impl<E> Clone for CoalesceLayer<E> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<E> std::fmt::Debug for CoalesceLayer<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalesceLayer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<S, E> Layer<S> for CoalesceLayer<E> {
    type Service = CoalesceService<S, E>;

    fn layer(&self, inner: S) -> Self::Service {
        CoalesceService::new(inner, self.shared.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_pass_memory_keeps_digests_within_its_byte_bound() {
        let bytes = 8 * CoalesceConfig::PASS_ENTRY_BYTES;
        let passes = Passes::new(Duration::from_secs(60), bytes);
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

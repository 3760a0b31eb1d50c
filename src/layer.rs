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
    pub(crate) passes: Option<moka::sync::Cache<Key, ()>>,
    /// Whether the backend is failing, and should be skipped for a while.
    pub(crate) breaker: crate::breaker::Breaker,
}

impl<E> Shared<E> {
    /// The request's key, or `None` if it has none. An extractor that panics
    /// gives `None` too: the request then bypasses the layer rather than fail.
    pub(crate) fn key<B>(&self, req: &Request<B>) -> Option<Key>
    where
        E: KeyExtractor<B>,
    {
        match catch_unwind(AssertUnwindSafe(|| self.extractor.extract(req))) {
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
    /// [`try_new`](Self::try_new) returns the error instead.
    pub fn new(config: CoalesceConfig) -> Self {
        Self::with_extractor(config, HttpKey::new())
    }

    /// A layer keyed by the default [`HttpKey`] extractor, or why the
    /// configuration cannot work.
    pub fn try_new(config: CoalesceConfig) -> Result<Self, ConfigError> {
        Self::try_with_extractor(config, HttpKey::new())
    }
}

impl<E> CoalesceLayer<E> {
    /// A layer keyed by `extractor` (a [`KeyExtractor`](crate::KeyExtractor),
    /// such as a closure).
    ///
    /// # Panics
    /// If the configuration is invalid (see [`CoalesceConfig::validate`]).
    pub fn with_extractor(config: CoalesceConfig, extractor: E) -> Self {
        Self::try_with_extractor(config, extractor).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A layer keyed by `extractor`, or why the configuration cannot work.
    pub fn try_with_extractor(config: CoalesceConfig, extractor: E) -> Result<Self, ConfigError> {
        config.validate()?;
        let passes = (!config.pass_ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(config.pass_ttl)
                .build()
        });
        let breaker = crate::breaker::Breaker::new(config.backend_cooldown);
        Ok(Self {
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

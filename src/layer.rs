//! [`CoalesceLayer`]: the value handed to `ServiceBuilder::layer` or
//! `axum::Router::layer`, and its builder. It holds the state every service
//! it makes shares ([`Shared`]).

use crate::flight::FlightTable;
use crate::shared::{Recent, Shared};
use crate::stats::{Counters, Meter};
use crate::{CoalesceConfig, CoalesceService, ConfigError, HttpKey, Stats};
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
        // Registers nothing yet: see `Meter`.
        let meter = Meter::of(&config);
        let passes =
            (!config.pass_ttl.is_zero()).then(|| Recent::new(config.pass_ttl, config.pass_memory));
        let breaker = Arc::new(crate::breaker::Breaker::new(config.backend_cooldown));
        let refresh_failed = Recent::new(crate::refresh::BACKOFF, config.pass_memory);
        let tag_header = config
            .tag_header
            .clone()
            .filter(|_| !config.keep_tag_header);
        let strip: Vec<_> = tag_header
            .into_iter()
            .chain(config.own_cache_control.clone())
            .collect();
        let marks =
            (config.outcome_header.is_some() || config.cache_status.is_some() || !strip.is_empty())
                .then(|| {
                    Arc::new(crate::stats::Marks {
                        outcome: config.outcome_header.clone(),
                        cache_status: config.cache_status.clone(),
                        strip,
                    })
                });
        Ok(CoalesceLayer {
            shared: Arc::new(Shared {
                breaker,
                config,
                extractor,
                table: FlightTable::new(meter.clone()),
                counters: Counters::new(&meter),
                meter,
                passes,
                refresh_failed,
                marks,
                tasks: Default::default(),
                merges: Default::default(),
            }),
        })
    }
}

impl<E> CoalesceLayer<E> {
    /// The extractor this layer keys requests by: to name a request's key
    /// outside the layer, in an access log say (log its
    /// [`fingerprint`](crate::Key::fingerprint), never the key, which may
    /// hold credentials).
    pub fn key_extractor(&self) -> &E {
        &self.shared.extractor
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

    /// A handle that purges stored answers — by key, by URL, by tag — in
    /// this process and in every process sharing the backend. Cheap to
    /// clone; give it to the handlers that change the data behind the
    /// answers.
    ///
    /// ```
    /// # use tower_coalesce::{CoalesceConfig, CoalesceLayer};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = CoalesceLayer::new(CoalesceConfig::new());
    /// let purger = layer.purger();
    /// let purged = purger.purge_tag("product-7").await.unwrap();
    /// assert_eq!(purged.position, 1);
    /// purger.purge_url("/products/7").await.unwrap();
    /// # }
    /// ```
    pub fn purger(&self) -> crate::Purger<E> {
        crate::Purger::new(self.shared.clone())
    }

    /// Shuts the layer down, for a process that is about to exit.
    ///
    /// From the call on, requests bypass the layer (they go to the inner
    /// service as they came, [`Outcome::Bypass`](crate::Outcome::Bypass)).
    /// Flights already under way get `grace` to land as usual — answered,
    /// stored, their leases released. Those still running then are stopped:
    /// their callers get `503`, and every lease they held is released, so
    /// the instances waiting on them take over at once instead of waiting
    /// for the lease to run out. Returns when all of that is done (a release
    /// takes at most [`backend_timeout`](crate::CoalesceConfig::backend_timeout)).
    ///
    /// Call it after the server stopped taking requests and finished those
    /// it had (axum's `with_graceful_shutdown`, hyper-util's
    /// `GracefulShutdown`): then only flights whose callers left remain
    /// (see [`complete_abandoned`](crate::CoalesceConfig::complete_abandoned)).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_coalesce::{CoalesceConfig, CoalesceLayer};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = CoalesceLayer::new(CoalesceConfig::new());
    /// // ... serve until a shutdown signal, then:
    /// let report = layer.shutdown(Duration::from_secs(5)).await;
    /// assert_eq!(report.stopped_flights, 0);
    /// # }
    /// ```
    pub async fn shutdown(&self, grace: std::time::Duration) -> crate::Shutdown {
        self.shared.tasks.shutdown(grace).await
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

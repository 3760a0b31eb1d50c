//! [`RedisBackendBuilder`]: the settings of a [`RedisBackend`], checked, and
//! its one connection opened.

use super::channels::Channels;
use super::pubsub::route;
use super::purges::{keep_in_step, Purges};
use super::RedisBackend;
use crate::{BackendError, MemoryBackend};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo};
use std::sync::Arc;
use std::time::Duration;

/// Builds a [`RedisBackend`].
#[derive(Debug, Clone)]
pub struct RedisBackendBuilder {
    pub(super) url: String,
    pub(super) namespace: String,
    pub(super) response_timeout: Duration,
    pub(super) connection_timeout: Duration,
    pub(super) near: Option<MemoryBackend>,
    pub(super) purge_records: usize,
    pub(super) near_cache_trust: Duration,
}

impl RedisBackendBuilder {
    /// The prefix of every Redis key this backend uses (default `coalesce`).
    /// Services that must not share answers need different namespaces.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The longest a command may take before it counts as failed (default 250 ms).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// The near cache: entries this process stored or read from Redis, kept
    /// in its memory for the rest of their TTL, so that hits never leave the
    /// process. Default: a [`MemoryBackend::new`] (10,000 entries, 64 MiB).
    /// An entry is never kept longer than Redis keeps it, but an entry
    /// deleted from Redis by hand stays here until its TTL ends.
    pub fn near_cache(mut self, near: MemoryBackend) -> Self {
        self.near = Some(near);
        self
    }

    /// How long after the purge channel was last known to be heard (a
    /// message, or the heartbeat every second) the near cache still
    /// answers (default 3 s). Past it, or while purges announced during a
    /// disconnection have not been read back, hits go to Redis, and while
    /// Redis is unreachable, to the origin: an answer that may have been
    /// purged is not served from memory for longer than this.
    pub fn near_cache_trust(mut self, trust: Duration) -> Self {
        self.near_cache_trust = trust;
        self
    }

    /// How many purge records Redis and each process keep (default 65,536):
    /// the last purge of each key, resource and tag. Past it the oldest are
    /// forgotten, and every answer filled before them counts as purged.
    pub fn purge_records(mut self, n: usize) -> Self {
        self.purge_records = n.max(1);
        self
    }

    /// No near cache: every hit is a Redis `GET` made by a flight.
    pub fn without_near_cache(mut self) -> Self {
        self.near = None;
        self
    }

    /// The longest a connection attempt may take (default 1 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Checks the settings, opens the connection manager and connects
    /// (waiting at most `connection_timeout` plus `response_timeout`).
    ///
    /// A Redis that cannot be reached yet is not an error here, only a
    /// warning: the manager connects when next used and reconnects after
    /// failures, and the layer works without the backend meanwhile. A URL
    /// that cannot be parsed, an empty namespace or one containing `{` or `}`
    /// (which would break the hash tag), and zero timeouts are errors.
    pub async fn connect(self) -> Result<RedisBackend, BackendError> {
        if self.namespace.is_empty() || self.namespace.contains(['{', '}']) {
            return Err(BackendError::msg(format!(
                "namespace {:?} must be non-empty and contain no '{{' or '}}'",
                self.namespace
            )));
        }
        if self.response_timeout.is_zero() || self.connection_timeout.is_zero() {
            return Err(BackendError::msg(
                "Redis timeouts must be greater than zero",
            ));
        }
        // RESP3 carries pub/sub messages on the command connection itself,
        // so one connection per process both talks and listens.
        let info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| BackendError::new("invalid Redis URL", e))?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))
            .map_err(|e| BackendError::new("invalid Redis URL", e))?;
        let channels = Channels::default();
        let router = channels.clone();
        let purges = Arc::new(Purges::new(
            &self.namespace,
            self.purge_records,
            self.near_cache_trust,
        ));
        let heard = purges.clone();
        let near = self.near.map(|near| near.judged_by(purges.log.clone()));
        let kept_near = near.clone();
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.response_timeout))
            .set_connection_timeout(Some(self.connection_timeout))
            .set_automatic_resubscription()
            .set_push_sender(move |push: PushInfo| {
                route(&router, kept_near.as_ref(), &heard, push);
                Ok::<(), std::convert::Infallible>(())
            });
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| BackendError::new("cannot create the Redis connection manager", e))?;
        let backend = RedisBackend {
            conn,
            namespace: self.namespace,
            channels,
            near,
            purges: purges.clone(),
        };
        // Open the connection now, so the first burst does not pay for it
        // inside `backend_timeout`; a Redis that is not there yet is only
        // logged, the manager keeps trying when used.
        let limit = self.connection_timeout + self.response_timeout;
        match tokio::time::timeout(limit, backend.warm_up()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "Redis is not reachable yet; the layer works without it until it is")
            }
            Err(_) => tracing::warn!(
                "Redis did not answer within {limit:?}; the layer works without it until it does"
            ),
        }
        tokio::spawn(keep_in_step(Arc::downgrade(&purges), backend.conn.clone()));
        Ok(backend)
    }
}

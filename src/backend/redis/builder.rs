//! [`RedisBackendBuilder`]: the settings of a [`RedisBackend`], checked, and
//! its one connection opened.

use super::channels::Channels;
use super::conn::Conn;
use super::pubsub::route;
use super::purges::{keep_in_step, Purges};
use super::RedisBackend;
use crate::{BackendError, MemoryBackend};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionInfo, IntoConnectionInfo, ProtocolVersion, PushInfo};
use std::sync::Arc;
use std::time::Duration;

/// The longest `connect` waits for Redis's first reply.
const WARM_UP_REPLY: Duration = Duration::from_millis(250);

/// Builds a [`RedisBackend`].
#[derive(Debug, Clone)]
pub struct RedisBackendBuilder {
    pub(super) servers: Servers,
    pub(super) namespace: String,
    pub(super) response_timeout: Duration,
    pub(super) connection_timeout: Duration,
    pub(super) near: Option<MemoryBackend>,
    pub(super) purge_records: usize,
    pub(super) near_cache_trust: Duration,
    pub(super) max_variants: usize,
}

/// Where Redis is.
#[derive(Debug, Clone)]
pub(super) enum Servers {
    /// One server, by URL.
    One(String),
    /// A cluster, by the URLs of some of its nodes.
    Cluster(Vec<String>),
}

impl RedisBackendBuilder {
    /// The prefix of every Redis key this backend uses (default `coalesce`).
    /// Services that must not share answers need different namespaces.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The longest the connection waits for a command's reply before it
    /// counts the command failed (default 5 s). The layer gives up on a
    /// call sooner — at `backend_timeout` when Redis answers nothing else,
    /// later while it answers other calls (slow, not stalled), at most half
    /// a lease — so this need be no longer than that.
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

    /// The most variants (answers selected by the request headers their
    /// `Vary` names) Redis keeps per primary key, at least 1 (default 8):
    /// storing one more deletes the least recently used, in the same
    /// script. The near cache keeps its own bound
    /// ([`MemoryBackendBuilder::max_variants`](crate::MemoryBackendBuilder::max_variants)).
    pub fn max_variants(mut self, n: usize) -> Self {
        self.max_variants = n.max(1);
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
        // rustls needs a process-wide crypto provider; one the application
        // installed first is kept. ring builds with a C compiler alone, but
        // offers no post-quantum key exchange (hence rustls's deprecation
        // note): an application that wants one installs aws-lc-rs's
        // provider before connecting.
        #[cfg(feature = "tls-rustls")]
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
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
        let channels = Channels::default();
        let router = channels.clone();
        let purges = Arc::new(Purges::new(
            &self.namespace,
            self.purge_records,
            self.near_cache_trust,
        ));
        // Weak: the connection keeps its push handler, and the backend's
        // task keeps a connection, so a strong reference would keep both
        // alive after the backend is dropped.
        let heard = Arc::downgrade(&purges);
        let near = self.near.map(|near| near.judged_by(purges.log.clone()));
        let kept_near = near.clone();
        let (resubscribe, dropped) = tokio::sync::mpsc::unbounded_channel();
        let push = move |push: PushInfo| {
            if let Some(purges) = heard.upgrade() {
                route(&router, kept_near.as_ref(), &purges, &resubscribe, push);
            }
            Ok::<(), std::convert::Infallible>(())
        };
        // RESP3 carries pub/sub messages on the command connections
        // themselves, so one connection per process (per node, on a
        // cluster) both talks and listens.
        let conn = match &self.servers {
            Servers::One(url) => {
                let info = resp3(url)?;
                let client = redis::Client::open(info)
                    .map_err(|e| BackendError::new("invalid Redis URL", e))?;
                // One connection attempt per command that finds the
                // connection down, no retries behind it: a Redis that is gone
                // refuses at once, and the command fails at once instead of
                // waiting out `backend_timeout` behind reconnection backoff
                // (the layer's breaker then skips it for a while).
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(0)
                    .set_response_timeout(Some(self.response_timeout))
                    .set_connection_timeout(Some(self.connection_timeout))
                    .set_automatic_resubscription()
                    .set_push_sender(push);
                let conn =
                    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
                        BackendError::new("cannot create the Redis connection manager", e)
                    })?;
                Conn::Server(conn)
            }
            Servers::Cluster(urls) => {
                if urls.is_empty() {
                    return Err(BackendError::msg(
                        "a Redis cluster needs at least one node URL",
                    ));
                }
                let nodes = urls
                    .iter()
                    .map(|url| resp3(url))
                    .collect::<Result<Vec<_>, _>>()?;
                // A few quick retries (redirections during a reshard use them),
                // not the client's default of 16 with waits from 1.28 s: a
                // node that is gone must fail the command fast.
                let client = redis::cluster::ClusterClientBuilder::new(nodes)
                    .use_protocol(ProtocolVersion::RESP3)
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()
                    .map_err(|e| BackendError::new("invalid Redis cluster nodes", e))?;
                // Subscriptions are made again after reconnections, and the
                // connections to the nodes are opened when first used.
                let config = redis::cluster::ClusterConfig::new()
                    .set_response_timeout(self.response_timeout)
                    .set_connection_timeout(self.connection_timeout)
                    .set_push_sender(push);
                Conn::Cluster(client.get_pending_async_connection_with_config(config))
            }
        };
        let backend = RedisBackend {
            conn,
            namespace: self.namespace,
            channels,
            near,
            purges: purges.clone(),
            max_variants: self.max_variants,
        };
        // Open the connection now, so the first burst does not pay for it
        // inside `backend_timeout`; a Redis that is not there yet is only
        // logged, the manager keeps trying when used.
        // A black-holed Redis at start-up costs the connection timeout and
        // a short wait for the first reply, not the whole response timeout.
        let limit = self.connection_timeout + self.response_timeout.min(WARM_UP_REPLY);
        match tokio::time::timeout(limit, backend.warm_up()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "Redis is not reachable yet; the layer works without it until it is")
            }
            Err(_) => tracing::warn!(
                "Redis did not answer within {limit:?}; the layer works without it until it does"
            ),
        }
        tokio::spawn(keep_in_step(
            Arc::downgrade(&purges),
            backend.conn.clone(),
            backend.channels.clone(),
            dropped,
        ));
        Ok(backend)
    }
}

/// How many times a cluster command is retried (a redirection, a node
/// reconnecting) before it fails.
const CLUSTER_RETRIES: u32 = 3;

/// `url`'s connection settings, speaking RESP3 (which carries pub/sub
/// messages on a command connection).
fn resp3(url: &str) -> Result<ConnectionInfo, BackendError> {
    let info = url
        .into_connection_info()
        .map_err(|e| BackendError::new("invalid Redis URL", e))?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    Ok(info.set_redis_settings(settings))
}

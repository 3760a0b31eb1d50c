//! The distributed backend: entries in a Redis shared by every instance of a
//! service, so that an answer one instance fetched serves them all.
//!
//! Redis keys are `<namespace>:{<hash>}:v`: the request key is hashed
//! (SHA-256, first 128 bits in hex) so that any key, however long or binary,
//! becomes a short Redis key, and the hash is the cluster hash tag, so that a
//! key's value — and, as the protocol grows, its lock and channel — share one
//! slot. Values are [`Entry::encode`]d; a value that does not decode is a miss,
//! overwritten by the next answer, never served.
//!
//! Connections come from `redis`'s `ConnectionManager`, which reconnects by
//! itself. Its response timeout bounds a command on a live connection, but
//! not the reconnect attempts behind a dead one: the bound a request can rely
//! on is the layer's [`backend_timeout`](crate::CoalesceConfig::backend_timeout),
//! which holds for every backend.

use super::{Backend, BackendError, BackendFuture};
use crate::{Entry, Key};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::time::Duration;

/// Stores entries in Redis. Cloning is cheap; clones share one connection.
#[derive(Clone)]
pub struct RedisBackend {
    conn: ConnectionManager,
    namespace: String,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisBackend`].
#[derive(Debug, Clone)]
pub struct RedisBackendBuilder {
    url: String,
    namespace: String,
    response_timeout: Duration,
    connection_timeout: Duration,
}

impl RedisBackend {
    /// Connects to the Redis at `url` (`redis://`, with credentials as
    /// `redis://user:password@host:port/db`) with the default settings.
    pub async fn connect(url: impl Into<String>) -> Result<Self, BackendError> {
        Self::builder(url).connect().await
    }

    /// Sets options before connecting.
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        RedisBackendBuilder {
            url: url.into(),
            namespace: "coalesce".to_owned(),
            response_timeout: Duration::from_millis(250),
            connection_timeout: Duration::from_secs(1),
        }
    }

    /// The Redis key under which the entry for `key` is stored.
    pub fn value_key(&self, key: &Key) -> String {
        let digest = Sha256::digest(key.as_bytes());
        let mut out = String::with_capacity(self.namespace.len() + 38);
        out.push_str(&self.namespace);
        out.push_str(":{");
        for byte in &digest[..16] {
            let _ = write!(out, "{byte:02x}");
        }
        out.push_str("}:v");
        out
    }
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

    /// The longest a connection attempt may take (default 1 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Checks the settings and opens the connection manager.
    ///
    /// A Redis that cannot be reached yet is not an error here: the manager
    /// connects when first used and reconnects after failures, and the layer
    /// works without the backend meanwhile. A URL that cannot be parsed, an
    /// empty namespace or one containing `{` or `}` (which would break the
    /// hash tag), and zero timeouts are errors.
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
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| BackendError::new("invalid Redis URL", e))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.response_timeout))
            .set_connection_timeout(Some(self.connection_timeout));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| BackendError::new("cannot create the Redis connection manager", e))?;
        Ok(RedisBackend {
            conn,
            namespace: self.namespace,
        })
    }
}

impl Backend for RedisBackend {
    fn lookup<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<Entry>> {
        Box::pin(async move {
            let redis_key = self.value_key(key);
            let mut conn = self.conn.clone();
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&redis_key)
                .query_async(&mut conn)
                .await
                .map_err(|e| BackendError::new("Redis GET failed", e))?;
            let Some(value) = value else { return Ok(None) };
            match Entry::decode(value.into()) {
                Ok(entry) => Ok(Some(entry)),
                Err(error) => {
                    tracing::warn!(%redis_key, %error, "ignoring a value that is not a valid entry");
                    Ok(None)
                }
            }
        })
    }

    fn store<'a>(&'a self, key: &'a Key, entry: Entry, ttl: Duration) -> BackendFuture<'a, ()> {
        Box::pin(async move {
            let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            if millis == 0 {
                return Ok(());
            }
            let mut conn = self.conn.clone();
            redis::cmd("SET")
                .arg(self.value_key(key))
                .arg(entry.encode().as_ref())
                .arg("PX")
                .arg(millis)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| BackendError::new("Redis SET failed", e))
        })
    }
}

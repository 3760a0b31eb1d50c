//! The distributed backend: entries in a Redis shared by every instance of a
//! service, so that an answer one instance fetched serves them all.
//!
//! Redis names are `<namespace>:3:{<resource hash>}:<variant hash>:<suffix>`
//! (`names`): any key, however long or binary, becomes short names, and the
//! resource hash is the cluster hash tag, so a key's value, lease, pass mark
//! and channel — and those of every variant of its resource — share one slot.
//! The Lua scripts are in `scripts`, the completion messages and their
//! routing to waiting flights in `pubsub`. Values are [`Entry::encode`]d; a
//! value that does not decode is a miss, overwritten by the next answer,
//! never served.
//!
//! Entries this process stored or read are also kept in a near cache in its
//! memory, for the rest of their Redis TTL, so hits never leave the process.
//!
//! Connections come from `redis`'s `ConnectionManager` (one server) or its
//! async cluster client (a cluster), which reconnect by themselves: a
//! command that finds its connection down makes one connection attempt
//! (a cluster command a few quick retries), so a Redis that is gone fails
//! commands at once rather than after reconnection backoff. The response
//! timeout bounds a command on a live connection; the bound a request can
//! rely on is the layer's [`backend_timeout`](crate::CoalesceConfig::backend_timeout),
//! which holds for every backend.

mod builder;
mod channels;
mod conn;
mod leases;
mod names;
mod pieces;
mod pubsub;
mod purges;
mod scripts;
mod store;
mod streams;

pub use self::builder::RedisBackendBuilder;
use self::channels::Channels;
use self::conn::Conn;
use self::names::Names;
use self::purges::Purges;
use self::scripts::{
    CATCH_UP, COMPLETE, DROP_BAD, GET_FRESH, PURGE_KEY, PURGE_LOG, RENEW, STORE, TRY_LOCK,
};
use super::{BackendError, BackendFuture, Invalidation};
use crate::{Entry, Key, MemoryBackend};
use std::sync::Arc;
use std::time::Duration;

/// Stores entries in Redis. Cloning is cheap; clones share one connection.
#[derive(Clone)]
pub struct RedisBackend {
    conn: Conn,
    namespace: String,
    channels: Channels,
    near: Option<MemoryBackend>,
    purges: Arc<Purges>,
    max_variants: usize,
}

impl RedisBackend {
    /// How many done channels this process is subscribed to (one per key
    /// whose flight it waits on in another process).
    pub fn subscriptions(&self) -> usize {
        self.channels.len()
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects to the Redis at `url` (`redis://`, with credentials as
    /// `redis://user:password@host:port/db`) with the default settings.
    pub async fn connect(url: impl Into<String>) -> Result<Self, BackendError> {
        Self::builder(url).connect().await
    }

    /// Sets options before connecting.
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        Self::builder_for(builder::Servers::One(url.into()))
    }

    /// Connects to the Redis Cluster that `nodes` belong to (seed nodes:
    /// `redis://` or `rediss://` URLs of some of its nodes; the others are
    /// found from them) with the default settings.
    ///
    /// Each key's names share its slot (see the module's documentation),
    /// so every command and script goes to one master, and completion
    /// messages travel on that shard (`SPUBLISH`, Redis 7 or later).
    pub async fn connect_cluster<I>(nodes: I) -> Result<Self, BackendError>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self::cluster_builder(nodes).connect().await
    }

    /// Sets options before connecting to the Redis Cluster that `nodes`
    /// belong to (see [`connect_cluster`](Self::connect_cluster)).
    pub fn cluster_builder<I>(nodes: I) -> RedisBackendBuilder
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let nodes = nodes.into_iter().map(Into::into).collect();
        Self::builder_for(builder::Servers::Cluster(nodes))
    }

    fn builder_for(servers: builder::Servers) -> RedisBackendBuilder {
        RedisBackendBuilder {
            servers,
            namespace: "coalesce".to_owned(),
            response_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(1),
            near: Some(MemoryBackend::new()),
            purge_records: crate::purge::PurgeLog::MAX_RECORDS,
            near_cache_trust: Duration::from_secs(3),
            max_variants: super::memory::DEFAULT_MAX_VARIANTS,
        }
    }

    /// Sends a `PING`: whether Redis answers through this backend's
    /// connection (which it opens if needed). For readiness checks.
    pub async fn ping(&self) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| BackendError::new("Redis PING failed", e))
    }

    /// Connects and loads the scripts, so that a burst sends only `EVALSHA`s
    /// (a script unknown to Redis costs a failed `EVALSHA` and a `SCRIPT
    /// LOAD` first).
    async fn warm_up(&self) -> Result<(), BackendError> {
        self.ping().await?;
        let mut conn = self.conn.clone();
        let scripts = [
            &*GET_FRESH,
            &*TRY_LOCK,
            &*DROP_BAD,
            &*RENEW,
            &*COMPLETE,
            &*PURGE_LOG,
            &*PURGE_KEY,
            &*CATCH_UP,
            &*STORE,
        ];
        let scripts: Vec<&redis::Script> = scripts.into_iter().chain(streams::scripts()).collect();
        // The script cache is the server's: after the first instance, one
        // `SCRIPT EXISTS` finds them all loaded.
        let mut exists = redis::cmd("SCRIPT");
        exists.arg("EXISTS");
        for script in &scripts {
            exists.arg(script.get_hash());
        }
        let loaded: Vec<bool> = exists
            .query_async(&mut conn)
            .await
            .map_err(|e| BackendError::new("Redis SCRIPT EXISTS failed", e))?;
        for (script, loaded) in scripts.into_iter().zip(loaded) {
            if !loaded {
                script
                    .load_async(&mut conn)
                    .await
                    .map_err(|e| BackendError::new("Redis SCRIPT LOAD failed", e))?;
            }
        }
        self.purges.catch_up(&mut conn).await
    }

    /// The Redis key under which the entry for `key` is stored.
    #[doc(hidden)]
    pub fn value_key(&self, key: &Key) -> String {
        self.names(key).value()
    }

    /// The Redis key of `key`'s lease (its value is the leader's token).
    #[doc(hidden)]
    pub fn lock_key(&self, key: &Key) -> String {
        self.names(key).lock()
    }

    /// The Redis key that marks `key` pass-through for every instance.
    #[doc(hidden)]
    pub fn pass_key(&self, key: &Key) -> String {
        self.names(key).pass()
    }

    /// The channel on which the end of `key`'s flight is published.
    #[doc(hidden)]
    pub fn done_channel(&self, key: &Key) -> String {
        self.names(key).done()
    }

    /// Every name of `key`, from one hashing of it.
    fn names(&self, key: &Key) -> Names {
        Names::new(&self.namespace, key)
    }
}

/// Purges go through the namespace's purge log in Redis (one script, which
/// also publishes them to every instance), and a key's or resource's
/// through its own purge mark too (a second script, on the key's slot).
impl Invalidation for RedisBackend {
    fn purge<'a>(&'a self, purge: &'a crate::Purge) -> BackendFuture<'a, crate::Purged> {
        Box::pin(async move {
            let target = purge.target();
            let names = &self.purges.names;
            let mut conn = self.conn.clone();
            let log = &self.purges.log;
            if let crate::Purge::Written(key) = purge {
                // Nothing of the resource stored, and no lease on it, in
                // any instance: nothing to purge, nothing recorded. A fill
                // that takes its lease after this look reads the origin
                // after the write.
                let live: bool = redis::cmd("EXISTS")
                    .arg(self.names(key).live())
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| BackendError::new("Redis purge failed", e))?;
                if !live {
                    return Ok(crate::Purged::at(log.position(), true));
                }
            }
            let mine = log.epoch();
            let (epoch, position): (u64, u64) = PURGE_LOG
                .key(&names.sequence)
                .key(&names.log)
                .key(&names.floor)
                .arg(&target.to_bytes()[..])
                .arg(self.purges.max_records)
                .arg(&names.channel)
                .arg(conn.publish_command())
                .arg(mine)
                .arg(log.latest())
                .arg(purges::next_epoch(mine))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| BackendError::new("Redis purge failed", e))?;
            let position = crate::PurgePosition::new(epoch, position);
            self.purges.recorded(position, target);
            let marked = match purge {
                crate::Purge::Key(key) => {
                    if let Some(near) = &self.near {
                        near.remove(key);
                    }
                    let names = self.names(key);
                    let mut invocation = PURGE_KEY.key(names.purged());
                    invocation.key(names.value()).key(names.lock());
                    Some(invocation)
                }
                crate::Purge::Resource(key) | crate::Purge::Written(key) => {
                    Some(PURGE_KEY.key(self.names(key).resource_purged()))
                }
                _ => None,
            };
            if let Some(mut invocation) = marked {
                let _: i64 = invocation
                    .arg(position.to_string())
                    .arg(purges::MARK_MS)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| BackendError::new("Redis purge mark failed", e))?;
            }
            Ok(crate::Purged::at(position, true))
        })
    }

    fn purge_position(&self) -> crate::PurgePosition {
        self.purges.log.position()
    }

    fn purged(&self, key: &Key, entry: &Entry) -> Option<crate::PurgePosition> {
        self.purges.log.purged(key, entry)
    }
}

/// A lease or TTL in whole milliseconds, at least 1 (Redis rejects `PX 0`).
fn millis(d: Duration) -> Result<u64, BackendError> {
    let ms = u64::try_from(d.as_millis())
        .map_err(|_| BackendError::msg("duration too long for Redis"))?;
    Ok(ms.max(1))
}

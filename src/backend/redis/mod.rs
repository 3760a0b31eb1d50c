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
mod names;
mod pubsub;
mod purges;
mod scripts;
mod streams;

pub use self::builder::RedisBackendBuilder;
use self::channels::Channels;
use self::conn::Conn;
use self::names::Names;
use self::pubsub::{shared_message, stored_message, unsubscribe, PASS, RELEASED};
use self::purges::Purges;
use self::scripts::{
    CATCH_UP, COMPLETE, DROP_BAD, GET_FRESH, PURGE_KEY, PURGE_LOG, RENEW, STORE, TRY_LOCK,
};
use super::watch::Watch;
use super::{BackendError, BackendFuture, Invalidation, Leases, Store};
use super::{Completion, LeaseToken, TryLock};
use crate::{Entry, Found, Key, MemoryBackend, Variants};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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

impl RedisBackend {
    /// What `STORE` and `COMPLETE` take to keep the variants index of
    /// `key`'s primary key: its name, the primary key's value's, the names
    /// the variant is selected by and its value's name (both empty for a
    /// primary key).
    fn variant_args(&self, key: &Key, names: &Names) -> (String, String, String, String) {
        let (selected_by, field) = match key.variants() {
            Some(variants) => (variants.to_field(), names.value()),
            None => (String::new(), String::new()),
        };
        (names.index(), names.primary_value(), selected_by, field)
    }

    fn keep_near(&self, key: &Key, entry: &Entry, ttl: Duration) {
        if let Some(near) = &self.near {
            near.insert(key, entry.clone(), ttl);
        }
    }
}

impl Store for RedisBackend {
    fn find_local(&self, key: &Key) -> Option<Found> {
        // Only while every purge is heard (see `near_cache_trust`).
        if !self.purges.trusted() {
            return None;
        }
        self.near.as_ref()?.find_local(key)
    }

    fn find<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<Found>> {
        Box::pin(async move {
            // An answer that came with a completion message is already here.
            if let Some(found) = self.find_local(key) {
                return Ok(Some(found));
            }
            let names = self.names(key);
            let redis_key = names.value();
            let mut conn = self.conn.clone();
            let found: redis::Value = GET_FRESH
                .key(&redis_key)
                .key(names.index())
                .arg(if names.selected() {
                    redis_key.as_str()
                } else {
                    ""
                })
                .invoke_async(&mut conn)
                .await
                .map_err(|e| BackendError::new("Redis GET failed", e))?;
            let (value, left_ms) = match found {
                redis::Value::Array(found) => match &found[..] {
                    [redis::Value::Int(1), redis::Value::BulkString(value), redis::Value::Int(left)] => {
                        (value.clone(), *left)
                    }
                    [redis::Value::Int(2), redis::Value::BulkString(names), redis::Value::Int(left)] =>
                    {
                        let Some(variants) = Variants::from_field(names) else {
                            tracing::warn!(%redis_key, "ignoring a variants index whose names cannot be read");
                            return Ok(None);
                        };
                        if let (Some(near), Ok(left)) = (&self.near, u64::try_from(*left)) {
                            near.insert_index(key, variants.clone(), Duration::from_millis(left));
                        }
                        return Ok(Some(Found::Variants(variants)));
                    }
                    _ => return Err(BackendError::msg("Redis GET answered an unknown reply")),
                },
                _ => return Ok(None),
            };
            // What Redis holds is judged against the purge log: nothing of
            // it answers while purges may be missing from the log. Redis
            // just answered, so the read-back is under way; the layer's
            // bound on this call turns a long wait into going on without
            // Redis. (Asked after the read, so a Redis that is gone fails
            // the read at once instead.)
            self.purges.until_caught_up().await;
            // Shared, not copied: the entry's body keeps these bytes, and a
            // value that does not decode is sent back to be deleted.
            let value = bytes::Bytes::from(value);
            match Entry::decode(value.clone()) {
                Ok(entry) => {
                    // A value without an expiry (-1, set by hand) is not kept.
                    if let Ok(left) = u64::try_from(left_ms) {
                        self.keep_near(key, &entry, Duration::from_millis(left));
                    }
                    Ok(Some(Found::Entry(entry)))
                }
                Err(error) => {
                    tracing::warn!(%redis_key, %error, "deleting a value that is not a valid entry");
                    // Deleted, not only ignored: a stored value keeps the
                    // lease from being taken, and this one answers nobody.
                    let _: i64 = DROP_BAD
                        .key(&redis_key)
                        .arg(value.as_ref())
                        .invoke_async(&mut conn)
                        .await
                        .map_err(|e| BackendError::new("Redis DEL of a bad value failed", e))?;
                    Ok(None)
                }
            }
        })
    }

    fn store<'a>(&'a self, key: &'a Key, entry: Entry, ttl: Duration) -> BackendFuture<'a, ()> {
        Box::pin(async move {
            if ttl.is_zero() {
                return Ok(());
            }
            let mut conn = self.conn.clone();
            let names = self.names(key);
            let value = entry.encode();
            let ms = millis(ttl)?;
            let message = stored_message(&value, ms);
            let (index, primary, selected_by, field) = self.variant_args(key, &names);
            let stored: i64 = STORE
                .key(names.value())
                .key(names.purged())
                .key(names.resource_purged())
                .key(names.live())
                .key(index)
                .key(primary)
                .arg(value.as_ref())
                .arg(ms)
                .arg(entry.fill_position().to_string())
                .arg(names.done())
                .arg(message)
                .arg(conn.publish_command())
                .arg(selected_by)
                .arg(field)
                .arg(self.max_variants)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| BackendError::new("Redis store failed", e))?;
            if stored == 1 {
                self.keep_near(key, &entry, ttl);
            } else {
                tracing::debug!("a purge came during the fill: its answer is not stored");
            }
            Ok(())
        })
    }
}

impl Leases for RedisBackend {
    fn try_lock<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        lease: Duration,
        refresh: Option<SystemTime>,
    ) -> BackendFuture<'a, TryLock> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            // The stale value's stored time as its encoding holds it.
            let stale: Vec<u8> = match refresh {
                Some(at) => crate::entry::to_millis(at)
                    .ok_or_else(|| BackendError::msg("a stored time before 1970"))?
                    .to_be_bytes()
                    .to_vec(),
                None => Vec::new(),
            };
            let names = self.names(key);
            let taken: redis::Value = names
                .leased(&TRY_LOCK)
                .key(names.live())
                .key(names.index())
                .arg(token.as_str())
                .arg(millis(lease)?)
                .arg(stale)
                .arg(if names.selected() { "0" } else { "1" })
                .invoke_async(&mut conn)
                .await
                .map_err(|e| BackendError::new("Redis lease acquisition failed", e))?;
            Ok(match taken {
                redis::Value::Int(1) => TryLock::Acquired,
                redis::Value::Int(2) => TryLock::Pass,
                redis::Value::Array(newer) => {
                    // Another answer replaced the stale one: the flight's
                    // next lookup finds it here.
                    if let [_, redis::Value::BulkString(value), redis::Value::Int(left)] =
                        &newer[..]
                    {
                        if let (Ok(entry), Ok(left)) = (
                            Entry::decode(bytes::Bytes::from(value.clone())),
                            u64::try_from(*left),
                        ) {
                            self.keep_near(key, &entry, Duration::from_millis(left));
                        }
                    }
                    TryLock::Held
                }
                _ => TryLock::Held,
            })
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        lease: Duration,
    ) -> BackendFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let names = self.names(key);
            let renewed: i64 = RENEW
                .key(names.lock())
                .key(names.live())
                .key(names.stream())
                .arg(token.as_str())
                .arg(millis(lease)?)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| BackendError::new("Redis lease renewal failed", e))?;
            Ok(renewed == 1)
        })
    }

    fn watch<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<Watch>> {
        Box::pin(async move {
            let channel = self.done_channel(key);
            let unsubscriber = self.conn.clone();
            let channels = self.channels.clone();
            let (watch, unsubscribed) = self.channels.watch(&channel, key, move |name| {
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(unsubscribe(unsubscriber, channels, name));
                }
            });
            if let Some(unsubscribed) = unsubscribed {
                unsubscribed.await;
            }
            let mut conn = self.conn.clone();
            conn.subscribe(&channel)
                .await
                .map_err(|e| BackendError::new("Redis SUBSCRIBE failed", e))?;
            Ok(Some(watch))
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        completion: Completion,
    ) -> BackendFuture<'a, bool> {
        Box::pin(async move {
            let mut kept = None;
            let drop = matches!(completion, Completion::Pass { .. });
            let (value, ttl, pass, message) = match completion {
                Completion::Stored { entry, ttl } => {
                    let value = entry.encode();
                    let ttl = millis(ttl)?;
                    let message = stored_message(&value, ttl);
                    kept = Some((entry, Duration::from_millis(ttl)));
                    (value, ttl, 0, message)
                }
                Completion::Shared(entry) => {
                    let message = shared_message(&entry.encode());
                    (bytes::Bytes::new(), 0, 0, message)
                }
                Completion::Pass { ttl } => {
                    let pass = if ttl.is_zero() { 0 } else { millis(ttl)? };
                    (bytes::Bytes::new(), 0, pass, PASS.to_vec())
                }
                Completion::Released => (bytes::Bytes::new(), 0, 0, RELEASED.to_vec()),
            };
            let names = self.names(key);
            let mut conn = self.conn.clone();
            let filled = kept
                .as_ref()
                .map_or(crate::PurgePosition::default(), |(entry, _)| {
                    entry.fill_position()
                });
            let (index, primary, selected_by, field) = self.variant_args(key, &names);
            let done: i64 = names
                .leased(&COMPLETE)
                .key(names.purged())
                .key(names.resource_purged())
                .key(names.live())
                .key(index)
                .key(primary)
                .arg(token.as_str())
                .arg(value.as_ref())
                .arg(ttl)
                .arg(pass)
                .arg(names.done())
                .arg(message)
                .arg(if drop { "1" } else { "0" })
                .arg(filled.to_string())
                .arg(conn.publish_command())
                .arg(selected_by)
                .arg(field)
                .arg(self.max_variants)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| BackendError::new("Redis flight completion failed", e))?;
            if let (1, Some((entry, ttl))) = (done, kept) {
                self.keep_near(key, &entry, ttl);
            }
            if let (1, true, Some(near)) = (done, drop, &self.near) {
                near.remove(key);
            }
            if done == 2 {
                tracing::debug!("a purge came during the fill: its answer is not stored");
            }
            Ok(done != 0)
        })
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

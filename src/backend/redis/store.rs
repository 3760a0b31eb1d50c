//! Where answers are kept in Redis: `GET_FRESH` finds a key's value (or,
//! under a primary key, its variants index), `STORE` keeps an answer made
//! without a lease, and the near cache keeps what this process stored or
//! read for the rest of its TTL.

use super::conn::Conn;
use super::names::Names;
use super::pieces::{self, Pointer};
use super::pubsub::stored_message;
use super::scripts::{DROP_BAD, GET_FRESH, STORE};
use super::{millis, RedisBackend};
use crate::backend::{BackendFuture, Store};
use crate::{BackendError, Entry, Found, Key, Variants};
use std::time::Duration;

impl RedisBackend {
    /// What `STORE` and `COMPLETE` take to keep the variants index of
    /// `key`'s primary key: the names the variant is selected by and its
    /// value's name (both empty for a primary key).
    pub(super) fn variant_args(&self, key: &Key, names: &Names) -> (String, String) {
        match key.variants() {
            Some(variants) => (variants.to_field(), names.value()),
            None => (String::new(), String::new()),
        }
    }

    pub(super) fn keep_near(&self, key: &Key, entry: &Entry, ttl: Duration) {
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

    fn local_size(&self) -> Option<crate::LocalSize> {
        self.near.as_ref()?.local_size()
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
            let encoded = match Pointer::read(&value) {
                None => value.clone(),
                Some(pointer) => match pieces::read(&mut conn, &redis_key, &pointer).await? {
                    Some(whole) => whole,
                    None => {
                        // Its pieces went before it (evicted): it answers
                        // nobody, and would keep the lease from being taken.
                        tracing::warn!(%redis_key, "deleting a stored answer whose pieces are gone");
                        drop_bad(&mut conn, &redis_key, &value).await?;
                        return Ok(None);
                    }
                },
            };
            match Entry::decode(encoded) {
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
                    drop_bad(&mut conn, &redis_key, &value).await?;
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
            let encoded = entry.encode();
            let ms = millis(ttl)?;
            let message = stored_message(&encoded, ms);
            let value = pieces::write(&mut conn, &names.value(), encoded, ms).await?;
            let (selected_by, field) = self.variant_args(key, &names);
            let mut store = STORE.key(names.value());
            names.stored_keys(&mut store);
            let stored: i64 = store
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

/// Deletes the value named `name` if it still holds `value` (with its
/// pieces, if it points to some): one that answers nobody.
async fn drop_bad(conn: &mut Conn, name: &str, value: &[u8]) -> Result<(), BackendError> {
    let _: i64 = DROP_BAD
        .key(name)
        .arg(value)
        .invoke_async(conn)
        .await
        .map_err(|e| BackendError::new("Redis DEL of a bad value failed", e))?;
    Ok(())
}

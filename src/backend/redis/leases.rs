//! How flights in different processes exclude each other through Redis:
//! the key's lease (`TRY_LOCK`, renewed by `RENEW`), the done channel its
//! waiters listen on, and `COMPLETE`, which ends the flight in one step.

use super::pubsub::{shared_message, stored_message, unsubscribe, PASS, RELEASED};
use super::scripts::{COMPLETE, RENEW, TRY_LOCK};
use super::{millis, RedisBackend};
use crate::backend::watch::Watch;
use crate::backend::{BackendFuture, Completed, Completion, LeaseToken, Leases, TryLock};
use crate::{BackendError, Entry, Key};
use std::time::{Duration, SystemTime};

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

    fn shares_leases(&self) -> bool {
        true
    }

    fn complete<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        completion: Completion,
    ) -> BackendFuture<'a, Completed> {
        Box::pin(async move {
            let mut kept = None;
            // Writing a large answer's pieces failed: released instead.
            let mut unwritten = false;
            let drop = matches!(completion, Completion::Pass { .. });
            let (value, mut ttl, pass, mut message) = match completion {
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
            let value = match kept {
                Some(_) => {
                    match super::pieces::write(&mut conn, &names.value(), value, ttl).await {
                        Ok(value) => value,
                        Err(error) => {
                            // Released instead: the waiting instances take the
                            // lease over now rather than after it runs out.
                            tracing::warn!(%error, "storing a large answer failed; releasing its lease");
                            (kept, ttl, message) = (None, 0, RELEASED.to_vec());
                            unwritten = true;
                            bytes::Bytes::new()
                        }
                    }
                }
                None => value,
            };
            let filled = kept
                .as_ref()
                .map_or(crate::PurgePosition::default(), |(entry, _)| {
                    entry.fill_position()
                });
            let (selected_by, field) = self.variant_args(key, &names);
            let mut complete = names.leased(&COMPLETE);
            names.stored_keys(&mut complete);
            let done: i64 = complete
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
            Ok(match done {
                0 => Completed::Lost,
                2 => {
                    tracing::debug!("a purge came during the fill: its answer is not stored");
                    Completed::NotStored
                }
                _ if unwritten => Completed::NotStored,
                _ => Completed::Done,
            })
        })
    }
}

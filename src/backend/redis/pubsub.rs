//! What travels on the done channels: the completion messages a leader
//! publishes, and how a process's push handler routes them to its waiting
//! flights (keeping small stored answers near first). Also the retried
//! `UNSUBSCRIBE` of a channel nobody in the process waits on any more.

use super::super::watch::Notice;
use super::channels::Channels;
use super::conn::Conn;
use super::purges::Purges;
use crate::{Entry, Key, MemoryBackend};
use redis::{PushInfo, PushKind, Value};
use std::time::Duration;

/// Unsubscribes from `name` once nobody in this process waits on it,
/// retrying until Redis confirms: a command whose caller timed out before a
/// stalled connection could send it is never sent, and a lost `UNSUBSCRIBE`
/// would keep the subscription for the connection's whole life. Gives up as
/// soon as a new waiter watches the channel again (its subscription must
/// stand), or after about half a minute. While a command is under way, a new
/// waiter's `SUBSCRIBE` waits for its answer (see [`Channels`]), so that it
/// always reaches Redis after the `UNSUBSCRIBE`.
pub(super) async fn unsubscribe(mut conn: Conn, channels: Channels, name: String) {
    let mut pause = Duration::from_millis(100);
    for _ in 0..10 {
        let Some(under_way) = channels.unsubscribing(&name) else {
            return;
        };
        let result = conn.unsubscribe(&name).await;
        drop(under_way);
        match result {
            Ok(()) => return,
            Err(error) => tracing::debug!(%error, %name, "unsubscribe failed; trying again"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
    tracing::warn!(%name, "could not unsubscribe; this connection keeps receiving the channel's messages, which are ignored");
}

/// Hands a push from Redis to the watches it concerns, or, on the purge
/// channel, to the purge log.
///
/// `resubscribe` takes the shard channels a cluster dropped that are still
/// watched: they are subscribed to again, on their slot's new master.
pub(super) fn route(
    channels: &Channels,
    near: Option<&MemoryBackend>,
    purges: &Purges,
    resubscribe: &tokio::sync::mpsc::UnboundedSender<String>,
    push: PushInfo,
) {
    match push.kind {
        // A cluster's messages come on shard channels.
        PushKind::Message | PushKind::SMessage => {
            let mut data = push.data.into_iter();
            let (Some(Value::BulkString(name)), payload) = (data.next(), data.next()) else {
                return;
            };
            let Ok(name) = std::str::from_utf8(&name) else {
                return;
            };
            if name == purges.names.channel {
                if let Some(Value::BulkString(message)) = payload {
                    purges.heard(&message);
                }
                return;
            }
            channels.signal(name, |key| match payload {
                Some(Value::BulkString(payload)) => read_message(near, key, payload.into()),
                _ => Notice::LookAgain,
            });
        }
        // Messages published while the link was down are lost: every
        // waiter must look again.
        PushKind::Disconnection => {
            purges.lost();
            channels.signal_all();
        }
        // A cluster drops a shard channel's subscribers when its slot
        // moves to another master (and confirms this process's own
        // unsubscriptions the same way). On the purge channel, which this
        // process never leaves, purges may be missed from then on: they are
        // read back, and the channel subscribed to again on its new master.
        // A done channel still watched is subscribed to again there, and its
        // waiters look again (its message may have gone meanwhile).
        PushKind::SUnsubscribe => {
            let Some(Value::BulkString(name)) = push.data.into_iter().next() else {
                return;
            };
            if name == purges.names.channel.as_bytes() {
                purges.lost();
            } else if let Ok(name) = std::str::from_utf8(&name) {
                if channels.watched(name) {
                    channels.signal(name, |_| Notice::LookAgain);
                    let _ = resubscribe.send(name.to_owned());
                }
            }
        }
        _ => {}
    }
}

/// Stored answers up to this size (encoded) travel inside the completion
/// message; the waiting instances read larger ones with a `GET`.
const ANNOUNCED_MAX: usize = 16 * 1024;
/// Answers shared but not stored (a server error, a ttl of zero, a
/// flight-only key) up to this size (encoded) travel inside the completion
/// message: there is nothing to read them from. It goes to the instances
/// waiting on the key's lease only, and stays far below Redis's default
/// limits on a subscriber's output (8 MB for a minute, 32 MB at once).
/// Past it the waiting instances take the lease over (one origin call
/// more); an answer still arriving past `max_stored_bytes` streams instead.
const SHARED_MAX: usize = 1024 * 1024 + 64 * 1024;

/// The completion message of a flight whose answer could not be shared.
pub(super) const PASS: &[u8] = b"pass";
/// The message that a flight's stream opened, grew or ended.
pub(super) const STREAM: &[u8] = b"stream";
/// The completion message of a flight that ended with nothing to hand on.
pub(super) const RELEASED: &[u8] = b"released";

/// The completion message for a stored answer: `V`, the TTL in ms (8 bytes,
/// big-endian), then the encoded entry — or just `stored` for a large one,
/// which waiters then read with a `GET`.
pub(super) fn stored_message(encoded: &[u8], ttl_ms: u64) -> Vec<u8> {
    if encoded.len() > ANNOUNCED_MAX {
        return b"stored".to_vec();
    }
    let mut message = Vec::with_capacity(9 + encoded.len());
    message.push(b'V');
    message.extend_from_slice(&ttl_ms.to_be_bytes());
    message.extend_from_slice(encoded);
    message
}

/// The completion message for an answer shared with the flight's waiters
/// but not stored: `F`, then the encoded entry — or `released` for a large
/// one, whose waiters then take the lease over.
pub(super) fn shared_message(encoded: &[u8]) -> Vec<u8> {
    if encoded.len() > SHARED_MAX {
        return RELEASED.to_vec();
    }
    let mut message = Vec::with_capacity(1 + encoded.len());
    message.push(b'F');
    message.extend_from_slice(encoded);
    message
}

/// Reads a completion message on `key`'s channel into what its waiters are
/// told; a stored answer that came with it is kept near first, so that the
/// woken waiters find it without a `GET`. Anything that does not decode is
/// only a wake-up: the waiters look in Redis. Bodies share the message's
/// bytes.
fn read_message(near: Option<&MemoryBackend>, key: &Key, message: bytes::Bytes) -> Notice {
    match message.first() {
        Some(b'V') => {
            if let (Some(near), Some((entry, ttl))) = (near, decode_stored(message)) {
                near.insert(key, entry, ttl);
            }
            Notice::LookAgain
        }
        Some(b'F') => match Entry::decode(message.slice(1..)) {
            Ok(entry) => Notice::Answer(entry),
            Err(_) => Notice::LookAgain,
        },
        _ if message == PASS => Notice::Pass,
        _ if message == STREAM => Notice::Streaming,
        _ => Notice::LookAgain,
    }
}

/// Reads a [`stored_message`].
fn decode_stored(message: bytes::Bytes) -> Option<(Entry, Duration)> {
    let ttl = message.strip_prefix(b"V")?.first_chunk::<8>()?;
    let ttl = Duration::from_millis(u64::from_be_bytes(*ttl));
    let entry = Entry::decode(message.slice(9..)).ok()?;
    Some((entry, ttl))
}

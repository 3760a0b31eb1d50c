//! A flight's answer streamed through Redis to the instances waiting on it
//! (docs/protocol.md, "Streams"): a hash per key naming the flight whose
//! stream it is (`…:s`: token, head, length, first piece kept, end,
//! trailers) and the body in pieces of at most [`PIECE`] bytes
//! (`…:b:<token>:<n>`), all on the key's slot. Each write is one script
//! that also announces it on the key's done channel; readers read what they
//! lack by offset, so a lost message costs latency, never bytes.

use super::names::Names;
use super::pubsub::STREAM;
use super::{millis, RedisBackend};
use crate::backend::{BackendError, BackendFuture, LeaseToken, StreamEnd, StreamRead, Streams};
use crate::{Entry, Key};
use bytes::Bytes;
use redis::Script;
use std::sync::LazyLock;
use std::time::Duration;

/// The most bytes one piece holds: a Redis string tops out at 512 MB, and a
/// read of one piece is one `GETRANGE`.
pub(super) const PIECE: u64 = 1 << 20;

/// How long pieces and a finished stream outlast their last write, in
/// leases: long enough for every reader to have read them, as readers read
/// at Redis's pace, not their clients'.
const KEPT_LEASES: u32 = 3;

/// KEYS[1] lock, KEYS[2] stream, KEYS[3] done channel; ARGV[1] token,
/// ARGV[2] the encoded head, ARGV[3] lease in ms, ARGV[4] message, ARGV[5]
/// the publishing command. Only the lease's holder opens a stream.
pub(super) static OPEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
          redis.call('DEL', KEYS[2])
          redis.call('HSET', KEYS[2], 'k', ARGV[1], 'h', ARGV[2], 'n', 0, 'f', 0)
          redis.call('PEXPIRE', KEYS[2], ARGV[3])
          redis.call(ARGV[5], KEYS[3], ARGV[4])
          return 1",
    )
});

/// KEYS[1] stream, KEYS[2] piece, KEYS[3] done channel, KEYS[4] a piece to
/// drop (past the window); ARGV[1] token, ARGV[2] bytes, ARGV[3] how long
/// pieces last in ms, ARGV[4] the new length, ARGV[5] message, ARGV[6] the
/// publishing command, ARGV[7] the first piece kept once KEYS[4] is
/// dropped (`''`: none dropped), ARGV[8] the length the bytes start at.
///
/// A write may be sent again when its reply was late or lost: whatever
/// part of the bytes the stream already has is not appended twice, so a
/// retry never repeats or reorders a byte. A stream shorter than where the
/// bytes start (a gap) or longer than where they end is out of step: 0.
pub(super) static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local s = redis.call('HMGET', KEYS[1], 'k', 'n')
          if s[1] ~= ARGV[1] then return 0 end
          local n, from, to = tonumber(s[2]), tonumber(ARGV[8]), tonumber(ARGV[4])
          if n < from or n > to then return 0 end
          if n < to then
            redis.call('APPEND', KEYS[2], string.sub(ARGV[2], n - from + 1))
            redis.call('HSET', KEYS[1], 'n', ARGV[4])
          end
          redis.call('PEXPIRE', KEYS[2], ARGV[3])
          if ARGV[7] ~= '' then
            redis.call('DEL', KEYS[4])
            redis.call('HSET', KEYS[1], 'f', ARGV[7])
          end
          redis.call(ARGV[6], KEYS[3], ARGV[5])
          return 1",
    )
});

/// KEYS[1] stream, KEYS[2] done channel, KEYS[3] the flight's end record;
/// ARGV[1] token, ARGV[2] `c` (complete) or `f` (failed), ARGV[3] the
/// encoded trailers, ARGV[4] how long the stream lasts now in ms, ARGV[5]
/// message, ARGV[6] the publishing command.
///
/// The end record keeps the length, the end and the trailers under the
/// flight's token as long as its pieces last, for a reader that reads the
/// end after the key's next flight has replaced the stream (see `READ`).
pub(super) static END: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('HGET', KEYS[1], 'k') ~= ARGV[1] then return 0 end
          redis.call('HSET', KEYS[1], 'e', ARGV[2], 't', ARGV[3])
          redis.call('PEXPIRE', KEYS[1], ARGV[4])
          local n = redis.call('HGET', KEYS[1], 'n')
          redis.call('HSET', KEYS[3], 'n', n, 'e', ARGV[2], 't', ARGV[3])
          redis.call('PEXPIRE', KEYS[3], ARGV[4])
          redis.call(ARGV[6], KEYS[2], ARGV[5])
          return 1",
    )
});

/// KEYS[1] stream, KEYS[2] the piece to read (the stream's own name when
/// the token is not known yet), KEYS[3] the end record of the token's
/// flight (the stream's name again when the token is not known); ARGV[1]
/// token (`''`: any), ARGV[2] the piece's index, ARGV[3] and ARGV[4] the
/// first and last offset in it, ARGV[5] the size of a piece.
/// Returns false if there is no such stream, else {token, length, first
/// piece kept, end, trailers, head (when the token was not given), bytes,
/// dropped}.
///
/// A flight's stream gives way to the next flight's for the key; a reader
/// of the one before that has not read its end yet finds it in the flight's
/// end record, with the pieces it still lacks (they last as long).
pub(super) static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local s = redis.call('HMGET', KEYS[1], 'k', 'n', 'f', 'e', 't', 'h')
          if ARGV[1] == '' then
            if not s[1] then return false end
            local dropped = 0
            if tonumber(ARGV[2]) < tonumber(s[3]) then dropped = 1 end
            return {s[1], s[2], s[3], s[4] or '', s[5] or '', s[6], '', dropped}
          end
          if s[1] ~= ARGV[1] then
            local r = redis.call('HMGET', KEYS[3], 'n', 'e', 't')
            if not r[1] then return false end
            s = {ARGV[1], r[1], '0', r[2], r[3]}
          end
          local bytes = ''
          local dropped = 0
          if tonumber(ARGV[2]) < tonumber(s[3]) then
            dropped = 1
          else
            bytes = redis.call('GETRANGE', KEYS[2], ARGV[3], ARGV[4])
            local first = tonumber(ARGV[2]) * tonumber(ARGV[5])
            if bytes == '' and first + tonumber(ARGV[3]) < tonumber(s[2]) then dropped = 1 end
          end
          return {s[1], s[2], s[3], s[4] or '', s[5] or '', '', bytes, dropped}",
    )
});

/// The scripts of this module, for `connect` to load.
pub(super) fn scripts() -> [&'static Script; 4] {
    [&*OPEN, &*APPEND, &*END, &*READ]
}

impl Names {
    /// The stream of the key's flight under way.
    pub(super) fn stream(&self) -> String {
        self.name("s")
    }

    /// Piece `n` of the stream of the flight holding `token`.
    pub(super) fn piece(&self, token: &str, n: u64) -> String {
        self.name(&format!("b:{token}:{n}"))
    }

    /// How the stream of the flight holding `token` ended.
    pub(super) fn ended(&self, token: &str) -> String {
        self.name(&format!("b:{token}:e"))
    }
}

/// Trailers as the stream keeps them: an entry holding only them, in the
/// entry's checked encoding.
fn encode_trailers(trailers: Option<&http::HeaderMap>) -> Bytes {
    match trailers {
        None => Bytes::new(),
        Some(trailers) => Entry::new(
            http::StatusCode::OK,
            http::Version::HTTP_11,
            http::HeaderMap::new(),
            Bytes::new(),
            Some(trailers.clone()),
        )
        .encode(),
    }
}

fn end_of(end: &[u8], trailers: Vec<u8>) -> Result<Option<StreamEnd>, BackendError> {
    Ok(match end {
        b"" => None,
        b"f" => Some(StreamEnd::Failed),
        b"c" if trailers.is_empty() => Some(StreamEnd::Complete(None)),
        b"c" => {
            let entry = Entry::decode(Bytes::from(trailers))
                .map_err(|e| BackendError::new("a stream's trailers do not decode", e))?;
            Some(StreamEnd::Complete(entry.trailers().cloned()))
        }
        _ => {
            return Err(BackendError::msg(
                "a stream's end is neither complete nor failed",
            ))
        }
    })
}

/// What `READ` answers.
type Read = (String, u64, u64, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>, u8);

impl Streams for RedisBackend {
    fn open_stream<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        head: &'a Entry,
        ttl: Duration,
    ) -> BackendFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let names = self.names(key);
            let opened: i64 = OPEN
                .key(names.lock())
                .key(names.stream())
                .key(names.done())
                .arg(token.as_str())
                .arg(head.encode().as_ref())
                .arg(millis(ttl)?)
                .arg(STREAM)
                .arg(conn.publish_command())
                .invoke_async(&mut conn)
                .await
                .map_err(|e| BackendError::new("Redis stream open failed", e))?;
            Ok(opened == 1)
        })
    }

    fn append_stream<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        at: u64,
        bytes: Bytes,
        (ttl, window): (Duration, usize),
    ) -> BackendFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let names = self.names(key);
            let kept = millis(ttl * KEPT_LEASES)?;
            // One script per piece the bytes fall in.
            let mut at = at;
            let mut rest = bytes;
            while !rest.is_empty() {
                let piece = at / PIECE;
                let room = (PIECE - at % PIECE) as usize;
                let now = rest.split_to(room.min(rest.len()));
                let from = at;
                at += now.len() as u64;
                // Past the window, the piece that many pieces back goes.
                let behind = (window as u64 / PIECE).max(1) + 1;
                let dropped = piece.checked_sub(behind);
                let appended: i64 = APPEND
                    .key(names.stream())
                    .key(names.piece(token.as_str(), piece))
                    .key(names.done())
                    .key(names.piece(token.as_str(), dropped.unwrap_or(0)))
                    .arg(token.as_str())
                    .arg(now.as_ref())
                    .arg(kept)
                    .arg(at)
                    .arg(STREAM)
                    .arg(conn.publish_command())
                    .arg(dropped.map_or(String::new(), |d| (d + 1).to_string()))
                    .arg(from)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| BackendError::new("Redis stream append failed", e))?;
                if appended != 1 {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    fn end_stream<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        end: StreamEnd,
        ttl: Duration,
    ) -> BackendFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let names = self.names(key);
            let (code, trailers) = match &end {
                StreamEnd::Complete(trailers) => ("c", encode_trailers(trailers.as_ref())),
                StreamEnd::Failed => ("f", Bytes::new()),
            };
            let _: i64 = END
                .key(names.stream())
                .key(names.done())
                .key(names.ended(token.as_str()))
                .arg(token.as_str())
                .arg(code)
                .arg(trailers.as_ref())
                .arg(millis(ttl * KEPT_LEASES)?)
                .arg(STREAM)
                .arg(conn.publish_command())
                .invoke_async(&mut conn)
                .await
                .map_err(|e| BackendError::new("Redis stream end failed", e))?;
            Ok(())
        })
    }

    fn read_stream<'a>(
        &'a self,
        key: &'a Key,
        token: Option<&'a str>,
        from: u64,
        max: usize,
    ) -> BackendFuture<'a, Option<StreamRead>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let names = self.names(key);
            let piece = from / PIECE;
            let start = from % PIECE;
            let last = (start + max.max(1) as u64).min(PIECE) - 1;
            let (piece_name, ended) = match token {
                Some(token) => (names.piece(token, piece), names.ended(token)),
                None => (names.stream(), names.stream()),
            };
            let read: Option<Read> = READ
                .key(names.stream())
                .key(piece_name)
                .key(ended)
                .arg(token.unwrap_or(""))
                .arg(piece)
                .arg(start)
                .arg(last)
                .arg(PIECE)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| BackendError::new("Redis stream read failed", e))?;
            let Some((token, len, _first, end, trailers, head, bytes, dropped)) = read else {
                return Ok(None);
            };
            let head = match head.is_empty() {
                true => None,
                false => Some(
                    Entry::decode(Bytes::from(head))
                        .map_err(|e| BackendError::new("a stream's head does not decode", e))?,
                ),
            };
            let mut read = StreamRead::new(token, len);
            read.head = head;
            read.bytes = Bytes::from(bytes);
            read.end = end_of(&end, trailers)?;
            read.dropped = dropped == 1;
            Ok(Some(read))
        })
    }
}

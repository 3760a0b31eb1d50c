//! Large stored answers, kept in pieces: a Redis string may hold 512 MB, but
//! one value of that size is one allocation and one reply that blocks Redis
//! while it is copied. An encoded entry longer than [`PIECE`] is written as
//! pieces of at most [`PIECE`] bytes (`<value name>:p:<id>:<n>`, on the
//! value's slot), and the value itself is a small *pointer* to them. The id
//! is fresh for every store, so pieces of two stores never mix: a reader
//! holding a pointer reads only its pieces, and a piece missing (evicted, or
//! deleted by a newer store) makes the read a miss, never a short answer.
//!
//! A pointer starts `TCR\x01`, then bytes 4–14 of the encoded entry (its
//! status, version and stored time, where the scripts read the stored time),
//! then `<id>:<count>:<length>` in ASCII, which the scripts parse to delete
//! the pieces of a value they replace or delete (`PIECES` in `scripts`).

use super::conn::Conn;
use crate::backend::LeaseToken;
use crate::BackendError;
use bytes::{Bytes, BytesMut};

/// The most bytes one piece holds, and the longest value stored whole.
pub(super) const PIECE: usize = 1 << 20;

/// A pointer's first bytes.
const TAG: &[u8; 4] = b"TCR\x01";

/// How much longer than the value its pieces live: the value expires first,
/// so a pointer never outlives its pieces by expiry.
const MARGIN_MS: u64 = 10_000;

/// Where a pointer's pieces are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pointer {
    id: String,
    count: usize,
    len: usize,
}

impl Pointer {
    /// The pointer in a stored value, if the value is one.
    pub(super) fn read(value: &[u8]) -> Option<Self> {
        if value.len() < 15 || &value[..4] != TAG {
            return None;
        }
        let tail = std::str::from_utf8(&value[15..]).ok()?;
        let mut parts = tail.split(':');
        let id = parts.next()?;
        let count = parts.next()?.parse().ok()?;
        let len: usize = parts.next()?.parse().ok()?;
        let whole = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
        (whole && parts.next().is_none() && count == len.div_ceil(PIECE) && count > 0).then(|| {
            Pointer {
                id: id.to_owned(),
                count,
                len,
            }
        })
    }

    /// The names of the pieces of the value named `value`.
    fn names<'a>(&'a self, value: &'a str) -> impl Iterator<Item = String> + 'a {
        (0..self.count).map(move |n| format!("{value}:p:{}:{n}", self.id))
    }
}

/// What a store writes as the value named `value` for `encoded`: the bytes
/// themselves when they fit in one piece; otherwise the pieces are written
/// first (expiring [`MARGIN_MS`] after the value would), and the value is
/// their pointer. The script that stores the value deletes the pieces if it
/// does not store it (see `scripts::PIECES`).
pub(super) async fn write(
    conn: &mut Conn,
    value: &str,
    encoded: Bytes,
    ttl_ms: u64,
) -> Result<Bytes, BackendError> {
    if encoded.len() <= PIECE {
        return Ok(encoded);
    }
    let id = LeaseToken::new()?;
    let pointer = Pointer {
        id: id.as_str().to_owned(),
        count: encoded.len().div_ceil(PIECE),
        len: encoded.len(),
    };
    let mut pipe = redis::pipe();
    for (n, name) in pointer.names(value).enumerate() {
        let end = ((n + 1) * PIECE).min(encoded.len());
        pipe.cmd("SET")
            .arg(name)
            .arg(encoded.slice(n * PIECE..end).as_ref())
            .arg("PX")
            .arg(ttl_ms.saturating_add(MARGIN_MS))
            .ignore();
    }
    pipe.query_async::<()>(conn)
        .await
        .map_err(|e| BackendError::new("Redis write of an answer's pieces failed", e))?;
    let mut out = BytesMut::with_capacity(64);
    out.extend_from_slice(TAG);
    out.extend_from_slice(&encoded[4..15]);
    out.extend_from_slice(format!("{}:{}:{}", pointer.id, pointer.count, pointer.len).as_bytes());
    Ok(out.freeze())
}

/// The encoded entry `pointer` points to, from the pieces of the value named
/// `value`; `None` if any piece is gone or not the length it should be.
pub(super) async fn read(
    conn: &mut Conn,
    value: &str,
    pointer: &Pointer,
) -> Result<Option<Bytes>, BackendError> {
    let names: Vec<String> = pointer.names(value).collect();
    let pieces: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
        .arg(&names)
        .query_async(conn)
        .await
        .map_err(|e| BackendError::new("Redis read of an answer's pieces failed", e))?;
    let mut whole = BytesMut::with_capacity(pointer.len);
    for (n, piece) in pieces.into_iter().enumerate() {
        let expected = (pointer.len - n * PIECE).min(PIECE);
        match piece {
            Some(piece) if piece.len() == expected => whole.extend_from_slice(&piece),
            _ => return Ok(None),
        }
    }
    Ok((whole.len() == pointer.len).then(|| whole.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointer(tail: &str) -> Vec<u8> {
        let mut value = TAG.to_vec();
        value.extend_from_slice(&[0; 11]);
        value.extend_from_slice(tail.as_bytes());
        value
    }

    #[test]
    fn a_pointer_reads_back_and_anything_else_is_not_one() {
        let id = "0123456789abcdef0123456789abcdef";
        let read = Pointer::read(&pointer(&format!("{id}:3:{}", 2 * PIECE + 5))).unwrap();
        assert_eq!((read.count, read.len), (3, 2 * PIECE + 5));
        let names: Vec<String> = read.names("ns:3:{r}:q:v").collect();
        assert_eq!(names[2], format!("ns:3:{{r}}:q:v:p:{id}:2"));
        // A count that does not match the length, a short id, extra parts,
        // another tag: not pointers.
        assert!(Pointer::read(&pointer(&format!("{id}:2:{}", 2 * PIECE + 5))).is_none());
        assert!(Pointer::read(&pointer("0123:3:5")).is_none());
        assert!(Pointer::read(&pointer(&format!("{id}:1:5:7"))).is_none());
        assert!(Pointer::read(&pointer(&format!("{id}:0:0"))).is_none());
        let mut entry = pointer(&format!("{id}:1:5"));
        entry[..4].copy_from_slice(b"TCE\x05");
        assert!(Pointer::read(&entry).is_none());
    }
}

//! The wire form of an [`Entry`]: a tag and format version, the response's
//! parts each length-prefixed, and a CRC-32 of all of it. What
//! `RedisBackend` stores and publishes, and what the fuzz target
//! (`fuzz/fuzz_targets/entry_decode.rs`) attacks: decoding must never
//! panic, and whatever it accepts must encode back to itself.

use super::{from_millis, initial_age, to_millis, Entry, Fill, Life, Parts, Stored};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use std::fmt;
use std::time::Duration;

/// A duration in whole milliseconds, saturated.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The first bytes of every encoded entry: a tag and the format version.
/// Version 2 added the time the entry was stored, version 3 how long it is
/// fresh and how long it may then be served stale, and where its fill
/// stands in the purge order with its tags, version 4 the purge order's
/// epoch beside that position, version 5 how long past its windows it is
/// kept for revalidation (and a lifetime with no freshness at all: an answer
/// that must be revalidated at every use).
pub(crate) const MAGIC: &[u8; 4] = b"TCE\x05";
/// The first bytes of a version 4 entry, still read (kept for no
/// revalidation).
pub(crate) const MAGIC_V4: &[u8; 4] = b"TCE\x04";
/// The first bytes of a version 3 entry, still read (its fill in epoch 0:
/// purged wherever the purge order has an epoch of its own).
pub(crate) const MAGIC_V3: &[u8; 4] = b"TCE\x03";
/// The first bytes of a version 2 entry, still read (freshness unknown:
/// fresh while the backend keeps it).
pub(crate) const MAGIC_V2: &[u8; 4] = b"TCE\x02";
/// The first bytes of a version 1 entry, still read (as never stored), so
/// that instances of an older release sharing a Redis are understood.
pub(crate) const MAGIC_V1: &[u8; 4] = b"TCE\x01";

impl Entry {
    /// The entry in its portable binary form: a tag and format version, the
    /// status, HTTP version, the time it was stored (milliseconds since the
    /// Unix epoch, 0 if never; always at bytes 7 to 14, where the Redis
    /// scripts read it), how long from then it is fresh, how long it may
    /// then be served stale while refreshed, and instead of an error, and
    /// how long the origin took to make it (milliseconds; all 0 if not
    /// known), the purge position its fill started at and that position's
    /// epoch (8 bytes each), its tags
    /// (a count, then 16 bytes of digest each), headers,
    /// body and trailers, each length-prefixed, then a CRC-32 of all that
    /// precedes it.
    pub fn encode(&self) -> Bytes {
        let p = &*self.inner;
        let mut buf = BytesMut::with_capacity(72 + self.weight());
        buf.put_slice(MAGIC);
        buf.put_u16(p.status.as_u16());
        buf.put_u8(version_code(p.version));
        buf.put_u64(self.stored_at().and_then(to_millis).unwrap_or(0));
        let life = p.stored.and_then(|s| s.life);
        buf.put_u64(life.map_or(0, |l| millis(l.fresh)));
        buf.put_u64(life.map_or(0, |l| millis(l.stale)));
        buf.put_u64(life.map_or(0, |l| millis(l.if_error)));
        buf.put_u64(life.map_or(0, |l| millis(l.took)));
        buf.put_u64(life.map_or(0, |l| millis(l.retain)));
        buf.put_u64(p.fill.at.position);
        buf.put_u64(p.fill.at.epoch);
        // At most `MAX_TAGS`: the layer gives an entry no more.
        let tags = &p.fill.tags[..p.fill.tags.len().min(crate::purge::MAX_TAGS)];
        buf.put_u8(tags.len() as u8);
        for tag in tags {
            buf.put_slice(tag);
        }
        put_map(&mut buf, &p.headers);
        put_bytes(&mut buf, &p.body);
        match &p.trailers {
            Some(t) => {
                buf.put_u8(1);
                put_map(&mut buf, t);
            }
            None => buf.put_u8(0),
        }
        let crc = crc32fast::hash(&buf);
        buf.put_u32(crc);
        buf.freeze()
    }

    /// Reads an entry written by [`Entry::encode`], of this format version
    /// or the four before. The body shares `bytes`.
    pub fn decode(bytes: Bytes) -> Result<Entry, DecodeError> {
        let v1 = bytes.starts_with(MAGIC_V1);
        let v2 = bytes.starts_with(MAGIC_V2);
        let v3 = bytes.starts_with(MAGIC_V3);
        let v4 = bytes.starts_with(MAGIC_V4);
        if bytes.len() < MAGIC.len() + 4 || !(v1 || v2 || v3 || v4 || bytes.starts_with(MAGIC)) {
            return Err(DecodeError("not an entry of this format version"));
        }
        let (content, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(content) != u32::from_be_bytes(crc.try_into().unwrap_or_default()) {
            return Err(DecodeError("checksum mismatch"));
        }
        let mut r = Reader(bytes.slice(MAGIC.len()..bytes.len() - 4));
        let status = StatusCode::from_u16(r.u16()?).map_err(|_| DecodeError("bad status"))?;
        let version = version_from_code(r.u8()?)?;
        let stored_ms = if v1 { 0 } else { r.u64()? };
        let (fresh_ms, stale_ms, if_error_ms, took_ms) = if v1 || v2 {
            (0, 0, 0, 0)
        } else {
            (r.u64()?, r.u64()?, r.u64()?, r.u64()?)
        };
        let retain_ms = if v1 || v2 || v3 || v4 { 0 } else { r.u64()? };
        let fill = if v1 || v2 {
            Fill::default()
        } else {
            let position = r.u64()?;
            let epoch = if v3 { 0 } else { r.u64()? };
            let at = crate::PurgePosition::new(epoch, position);
            let count = usize::from(r.u8()?);
            if count > crate::purge::MAX_TAGS {
                return Err(DecodeError("too many tags"));
            }
            let mut tags = Vec::with_capacity(count);
            for _ in 0..count {
                r.need(16)?;
                let mut digest = [0u8; 16];
                r.0.copy_to_slice(&mut digest);
                tags.push(digest);
            }
            Fill {
                at,
                tags: tags.into(),
            }
        };
        let headers = r.map()?;
        let body = r.bytes()?;
        let trailers = match r.u8()? {
            0 => None,
            1 => Some(r.map()?),
            _ => return Err(DecodeError("bad trailer flag")),
        };
        if r.0.has_remaining() {
            return Err(DecodeError("trailing bytes"));
        }
        let stored = match stored_ms {
            0 => None,
            ms => Some(Stored {
                at: from_millis(ms).ok_or(DecodeError("bad stored time"))?,
                initial: initial_age(&headers),
                life: (fresh_ms != 0 || retain_ms != 0).then(|| Life {
                    fresh: Duration::from_millis(fresh_ms),
                    stale: Duration::from_millis(stale_ms),
                    if_error: Duration::from_millis(if_error_ms),
                    took: Duration::from_millis(took_ms),
                    retain: Duration::from_millis(retain_ms),
                }),
            }),
        };
        // What decodes must encode back to itself: a lifetime is all there
        // or all absent, and only on a stored entry.
        let partial = (fresh_ms, stale_ms, if_error_ms, took_ms, retain_ms) != (0, 0, 0, 0, 0);
        if (stored_ms == 0 || (fresh_ms == 0 && retain_ms == 0)) && partial {
            return Err(DecodeError("a partial lifetime"));
        }
        Ok(Entry::with_parts(Parts {
            status,
            version,
            headers,
            body,
            trailers,
            stored,
            checked: std::sync::atomic::AtomicU64::new(fill.at.position),
            fill,
        }))
    }
}

/// Why bytes could not be read as an [`Entry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub(super) &'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid cached entry: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

fn version_code(v: Version) -> u8 {
    match v {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        _ => 2,
    }
}

fn version_from_code(code: u8) -> Result<Version, DecodeError> {
    Ok(match code {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        2 => Version::HTTP_11,
        3 => Version::HTTP_2,
        4 => Version::HTTP_3,
        _ => return Err(DecodeError("bad HTTP version")),
    })
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    // Lengths past u32 cannot be written; entries are bounded far below it
    // by `max_stored_bytes`, and a saturated length fails the decode, not a reader.
    buf.put_u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
    buf.put_slice(b);
}

fn put_map(buf: &mut BytesMut, map: &HeaderMap) {
    buf.put_u32(u32::try_from(map.len()).unwrap_or(u32::MAX));
    for (name, value) in map {
        put_bytes(buf, name.as_str().as_bytes());
        put_bytes(buf, value.as_bytes());
    }
}

/// A bounds-checked cursor: every read says how much it needs first.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.0.remaining() < n {
            return Err(DecodeError("truncated"));
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }

    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u32()? as usize;
        self.need(len)?;
        Ok(self.0.split_to(len))
    }

    fn map(&mut self) -> Result<HeaderMap, DecodeError> {
        let count = self.u32()? as usize;
        // Each pair takes at least 8 bytes: a count beyond that is a lie, and
        // must not become a huge allocation.
        if count > self.0.remaining() / 8 {
            return Err(DecodeError("truncated"));
        }
        // More pairs than a header map can hold is not an entry either (and
        // `with_capacity` would panic on it).
        let mut map =
            HeaderMap::try_with_capacity(count).map_err(|_| DecodeError("too many headers"))?;
        for _ in 0..count {
            let name = HeaderName::from_bytes(&self.bytes()?)
                .map_err(|_| DecodeError("bad header name"))?;
            let value = HeaderValue::from_maybe_shared(self.bytes()?)
                .map_err(|_| DecodeError("bad header value"))?;
            map.append(name, value);
        }
        Ok(map)
    }
}

//! A complete response that may be given to many requests: status, headers,
//! body and trailers, all cheap to share.
//!
//! An entry is immutable once built. Handing it to a follower clones the
//! header map and bumps the body's reference count; the body bytes are never
//! copied per follower.
//!
//! Entries that leave the process travel in a versioned, checksummed binary
//! form ([`Entry::encode`], [`Entry::decode`]). Decoding trusts nothing: a
//! value written by another program, by another version, or damaged on the
//! way is an error (and so a miss), never a panic and never a wrong answer.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A buffered response, shared by every request that receives it.
///
/// An entry that was [stored](Entry::stored) knows when, and responses made
/// from it carry an `Age` header (RFC 9111 §5.1): how long ago, in whole
/// seconds, the origin produced it. An entry straight from the origin adds no
/// `Age` (an `Age` the origin sent passes as it came).
#[derive(Debug, Clone)]
pub struct Entry {
    inner: Arc<Parts>,
}

#[derive(Debug)]
struct Parts {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
    stored: Option<Stored>,
}

#[derive(Debug, Clone, Copy)]
struct Stored {
    /// When, to the millisecond (as encoded).
    at: SystemTime,
    /// The `Age` the origin's response already had.
    initial: Duration,
}

impl Entry {
    /// Builds an entry from a response head, its whole body and its trailers.
    pub fn new(
        status: StatusCode,
        version: Version,
        headers: HeaderMap,
        body: Bytes,
        trailers: Option<HeaderMap>,
    ) -> Self {
        Self::with_parts(Parts {
            status,
            version,
            headers,
            body,
            trailers,
            stored: None,
        })
    }

    fn with_parts(parts: Parts) -> Self {
        Self {
            inner: Arc::new(parts),
        }
    }

    /// The same response, stored at `at` (kept to the millisecond, as
    /// encoded): responses made from it carry an `Age` header. The layer
    /// marks every entry it hands to [`Backend::store`](crate::Backend::store)
    /// this way, so a backend keeps the time by keeping the entry or its
    /// [encoded](Entry::encode) form.
    ///
    /// The stored entry's headers include `Age` (the origin's, or `0`), so
    /// that each response made from it sets the value in place instead of
    /// growing its header map.
    pub fn stored(self, at: SystemTime) -> Self {
        let p = &*self.inner;
        let mut headers = p.headers.clone();
        let initial = initial_age(&headers);
        if !headers.contains_key(http::header::AGE) {
            headers.insert(http::header::AGE, HeaderValue::from_static("0"));
        }
        let at = to_millis(at).and_then(from_millis);
        Self::with_parts(Parts {
            status: p.status,
            version: p.version,
            headers,
            body: p.body.clone(),
            trailers: p.trailers.clone(),
            stored: at.map(|at| Stored { at, initial }),
        })
    }

    /// When the entry was stored, if it was.
    pub fn stored_at(&self) -> Option<SystemTime> {
        self.inner.stored.map(|s| s.at)
    }

    /// The entry's age at `now` (RFC 9111 §4.2.3, simplified for a cache
    /// that stores a response as it arrives): the `Age` the origin's response
    /// already had, plus the time since it was stored. `None` for an entry
    /// that was never stored. A clock that went backwards counts as no time.
    pub fn age(&self, now: SystemTime) -> Option<Duration> {
        let stored = self.inner.stored?;
        let resident = now.duration_since(stored.at).unwrap_or_default();
        Some(stored.initial.saturating_add(resident))
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.inner.status
    }

    /// The HTTP version of the response.
    pub fn version(&self) -> Version {
        self.inner.version
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.inner.headers
    }

    /// The whole response body.
    pub fn body(&self) -> &Bytes {
        &self.inner.body
    }

    /// The response trailers, if the body had any (gRPC status lives there).
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.inner.trailers.as_ref()
    }

    /// How many bytes the entry holds: body, header and trailer names and
    /// values. The memory backend weighs entries by this.
    pub fn weight(&self) -> usize {
        fn map_len(map: &HeaderMap) -> usize {
            map.iter().map(|(n, v)| n.as_str().len() + v.len()).sum()
        }
        self.inner.body.len()
            + map_len(&self.inner.headers)
            + self.inner.trailers.as_ref().map_or(0, map_len)
    }

    /// A fresh response carrying this entry; the body shares the entry's bytes.
    pub(crate) fn to_response<B>(&self) -> Response<crate::CoalesceBody<B>> {
        let mut res = Response::new(crate::CoalesceBody::full(
            self.inner.body.clone(),
            self.inner.trailers.clone(),
        ));
        *res.status_mut() = self.inner.status;
        *res.version_mut() = self.inner.version;
        *res.headers_mut() = self.inner.headers.clone();
        if let Some(age) = self.age(SystemTime::now()) {
            res.headers_mut().insert(http::header::AGE, age_value(age));
        }
        res
    }
}

/// An `Age` value: whole seconds. Values up to ten minutes, the lifetimes
/// this layer's answers usually have, come from a table made once, so a
/// hit costs no allocation for its `Age` (about a third of a hit's overhead
/// otherwise).
fn age_value(age: Duration) -> HeaderValue {
    const TABLED: u64 = 600;
    static AGES: OnceLock<Box<[HeaderValue]>> = OnceLock::new();
    let secs = age.as_secs();
    if secs == 0 {
        return HeaderValue::from_static("0");
    }
    if secs >= TABLED {
        return HeaderValue::from(secs);
    }
    let ages = AGES.get_or_init(|| {
        (0..TABLED)
            // Leaked once, at most ten minutes' worth of short strings:
            // static values are shared without touching a reference count.
            .map(|n| HeaderValue::from_static(Box::leak(n.to_string().into_boxed_str())))
            .collect()
    });
    ages[secs as usize].clone()
}

/// The `Age` a response already has: whole seconds, anything else is none.
fn initial_age(headers: &HeaderMap) -> Duration {
    headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs)
}

/// A time as milliseconds since the Unix epoch, as entries encode it.
fn to_millis(at: SystemTime) -> Option<u64> {
    let since = at.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

fn from_millis(ms: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// The first bytes of every encoded entry: a tag and the format version.
/// Version 2 added the time the entry was stored.
const MAGIC: &[u8; 4] = b"TCE\x02";
/// The first bytes of a version 1 entry, still read (as never stored), so
/// that instances of an older release sharing a Redis are understood.
const MAGIC_V1: &[u8; 4] = b"TCE\x01";

impl Entry {
    /// The entry in its portable binary form: a tag and format version, the
    /// status, HTTP version, the time it was stored (milliseconds since the
    /// Unix epoch, 0 if never), headers, body and trailers, each
    /// length-prefixed, then a CRC-32 of all that precedes it.
    pub fn encode(&self) -> Bytes {
        let p = &*self.inner;
        let mut buf = BytesMut::with_capacity(72 + self.weight());
        buf.put_slice(MAGIC);
        buf.put_u16(p.status.as_u16());
        buf.put_u8(version_code(p.version));
        buf.put_u64(self.stored_at().and_then(to_millis).unwrap_or(0));
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
    /// or the one before. The body shares `bytes`.
    pub fn decode(bytes: Bytes) -> Result<Entry, DecodeError> {
        let v1 = bytes.starts_with(MAGIC_V1);
        if bytes.len() < MAGIC.len() + 4 || !(v1 || bytes.starts_with(MAGIC)) {
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
            }),
        };
        Ok(Entry::with_parts(Parts {
            status,
            version,
            headers,
            body,
            trailers,
            stored,
        }))
    }
}

/// Why bytes could not be read as an [`Entry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(&'static str);

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
    // by `max_body_bytes`, and a saturated length fails the decode, not a reader.
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONTENT_TYPE;

    fn sample() -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, "application/json".parse().unwrap());
        headers.append("x-multi", "a".parse().unwrap());
        headers.append("x-multi", HeaderValue::from_bytes(b"\xffb").unwrap());
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        Entry::new(
            StatusCode::NOT_FOUND,
            Version::HTTP_2,
            headers,
            Bytes::from_static(b"{\"id\":7}"),
            Some(trailers),
        )
    }

    #[test]
    fn encode_then_decode_gives_the_same_entry() {
        let e = sample();
        let d = Entry::decode(e.encode()).unwrap();
        assert_eq!(d.status(), StatusCode::NOT_FOUND);
        assert_eq!(d.version(), Version::HTTP_2);
        assert_eq!(d.headers(), e.headers());
        assert_eq!(d.body(), e.body());
        assert_eq!(d.trailers(), e.trailers());
        let empty = Entry::new(
            StatusCode::OK,
            Version::HTTP_11,
            HeaderMap::new(),
            Bytes::new(),
            None,
        );
        let d = Entry::decode(empty.encode()).unwrap();
        assert!(d.body().is_empty() && d.trailers().is_none() && d.headers().is_empty());
    }

    #[test]
    fn the_stored_time_survives_encoding_to_the_millisecond() {
        let never = Entry::decode(sample().encode()).unwrap();
        assert_eq!(never.stored_at(), None);
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let stored = sample().stored(at);
        let ms = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(stored.stored_at(), Some(ms));
        assert_eq!(
            Entry::decode(stored.encode()).unwrap().stored_at(),
            Some(ms)
        );
    }

    #[test]
    fn version_one_entries_are_read_as_never_stored() {
        // A version 1 entry is a version 2 one without the stored time.
        let v2 = sample().encode();
        let mut v1 = BytesMut::new();
        v1.put_slice(MAGIC_V1);
        v1.put_slice(&v2[4..7]);
        v1.put_slice(&v2[15..v2.len() - 4]);
        let crc = crc32fast::hash(&v1);
        v1.put_u32(crc);
        let d = Entry::decode(v1.freeze()).unwrap();
        assert_eq!(d.stored_at(), None);
        assert_eq!(d.status(), StatusCode::NOT_FOUND);
        assert_eq!(d.headers(), sample().headers());
        assert_eq!(d.trailers(), sample().trailers());
    }

    #[test]
    fn age_counts_the_origins_age_and_the_time_stored() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AGE, "10".parse().unwrap());
        let entry = Entry::new(
            StatusCode::OK,
            Version::HTTP_11,
            headers,
            Bytes::new(),
            None,
        );
        // Straight from the origin: its `Age` passes as it came.
        assert_eq!(entry.age(SystemTime::now()), None);
        assert_eq!(entry.to_response::<()>().headers()["age"], "10");

        let at = SystemTime::now() - Duration::from_secs(5);
        let stored = entry.stored(at);
        let age = stored.age(at + Duration::from_millis(5_900)).unwrap();
        assert_eq!(age.as_secs(), 15);
        // A clock that went backwards adds nothing.
        assert_eq!(
            stored.age(at - Duration::from_secs(60)),
            Some(Duration::from_secs(10))
        );
        let res = stored.to_response::<()>();
        let sent: u64 = res.headers()["age"].to_str().unwrap().parse().unwrap();
        assert!((15..20).contains(&sent), "age {sent}");
        assert_eq!(res.headers().get_all("age").iter().count(), 1);

        let fresh = sample().stored(SystemTime::now());
        assert_eq!(fresh.to_response::<()>().headers()["age"], "0");
    }

    #[test]
    fn age_values_are_whole_seconds_in_and_past_the_table() {
        for (secs, text) in [
            (0, "0"),
            (1, "1"),
            (599, "599"),
            (600, "600"),
            (86_400, "86400"),
        ] {
            let value = age_value(Duration::from_millis(secs * 1000 + 999));
            assert_eq!(value, text);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(
                Entry::decode(bytes.slice(..len)).is_err(),
                "length {len} decoded"
            );
        }
    }

    #[test]
    fn every_flipped_bit_is_an_error() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.to_vec();
                damaged[i] ^= 1 << bit;
                assert!(
                    Entry::decode(damaged.into()).is_err(),
                    "byte {i} bit {bit} decoded"
                );
            }
        }
    }

    #[test]
    fn foreign_values_are_errors() {
        for foreign in [
            &b""[..],
            b"hello",
            b"TCE\x03\x00\x00\x00\x00",
            b"{\"json\": true}",
        ] {
            assert!(Entry::decode(Bytes::from_static(foreign)).is_err());
        }
    }

    #[test]
    fn a_valid_checksum_over_lying_lengths_is_still_an_error() {
        // Well-formed frame, nonsense inside: a header count of 2^32-1.
        let mut buf = BytesMut::new();
        buf.put_slice(MAGIC);
        buf.put_u16(200);
        buf.put_u8(2);
        buf.put_u64(0);
        buf.put_u32(u32::MAX);
        let crc = crc32fast::hash(&buf);
        buf.put_u32(crc);
        assert_eq!(
            Entry::decode(buf.freeze()).unwrap_err(),
            DecodeError("truncated")
        );
    }

    #[test]
    fn responses_share_the_entry_body() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
        let entry = Entry::new(
            StatusCode::OK,
            Version::HTTP_11,
            headers,
            Bytes::from_static(b"hello"),
            None,
        );
        let a = entry.to_response::<()>();
        let b = entry.to_response::<()>();
        assert_eq!(a.status(), StatusCode::OK);
        assert_eq!(a.headers()[CONTENT_TYPE], "text/plain");
        assert_eq!(
            a.body().shared_bytes().unwrap().as_ptr(),
            entry.body().as_ptr()
        );
        assert_eq!(
            b.body().shared_bytes().unwrap().as_ptr(),
            entry.body().as_ptr()
        );
        assert_eq!(
            entry.weight(),
            5 + "content-type".len() + "text/plain".len()
        );
    }
}

//! A complete response that may be given to many requests: status, headers,
//! body and trailers, all cheap to share.
//!
//! An entry is immutable once built. Handing it to a follower clones the
//! header map and bumps the body's reference count; the body bytes are never
//! copied per follower.
//!
//! Entries that leave the process travel in a versioned, checksummed binary
//! form ([`Entry::encode`], [`Entry::decode`], in `codec`). Decoding trusts
//! nothing: a value written by another program, by another version, or
//! damaged on the way is an error (and so a miss), never a panic and never a
//! wrong answer.

mod codec;

pub use codec::DecodeError;
#[cfg(test)]
use codec::{MAGIC, MAGIC_V1};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Version};
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
    /// marks every entry it hands to [`Store::store`](crate::Store::store)
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
///
/// RFC 9111 §5.1: of a list (`Age: 5, 7`) the first member counts; a value
/// that is not a non-negative integer is ignored; one too large to
/// represent is 2^31 seconds (§1.2.2), never zero.
pub(crate) fn initial_age(headers: &HeaderMap) -> Duration {
    const OVERFLOW: u64 = 1 << 31;
    let Some(first) = headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
    else {
        return Duration::ZERO;
    };
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return Duration::ZERO;
    }
    let secs = first.parse::<u64>().map_or(OVERFLOW, |s| s.min(OVERFLOW));
    Duration::from_secs(secs)
}

/// A time as milliseconds since the Unix epoch, as entries encode it.
pub(crate) fn to_millis(at: SystemTime) -> Option<u64> {
    let since = at.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

pub(crate) fn from_millis(ms: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
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
    fn the_origins_age_is_read_as_rfc_9111_says() {
        let age = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::AGE, v.parse().unwrap());
            initial_age(&h).as_secs()
        };
        assert_eq!(age("5"), 5);
        assert_eq!(age("5, 7"), 5, "the first member of a list");
        assert_eq!(age("-3"), 0, "invalid: ignored");
        assert_eq!(age("abc"), 0);
        assert_eq!(age("99999999999999999999999"), 1 << 31, "overflow is 2^31");
        assert_eq!(age("9999999999"), 1 << 31);
        assert_eq!(initial_age(&HeaderMap::new()).as_secs(), 0);
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

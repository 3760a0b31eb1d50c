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
use std::sync::Arc;

/// A buffered response, shared by every request that receives it.
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
        Self {
            inner: Arc::new(Parts {
                status,
                version,
                headers,
                body,
                trailers,
            }),
        }
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
        res
    }
}

/// The first bytes of every encoded entry: a tag and the format version.
const MAGIC: &[u8; 4] = b"TCE\x01";

impl Entry {
    /// The entry in its portable binary form: a tag and format version, the
    /// status, HTTP version, headers, body and trailers, each length-prefixed,
    /// then a CRC-32 of all that precedes it.
    pub fn encode(&self) -> Bytes {
        let p = &*self.inner;
        let mut buf = BytesMut::with_capacity(64 + self.weight());
        buf.put_slice(MAGIC);
        buf.put_u16(p.status.as_u16());
        buf.put_u8(version_code(p.version));
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

    /// Reads an entry written by [`Entry::encode`]. The body shares `bytes`.
    pub fn decode(bytes: Bytes) -> Result<Entry, DecodeError> {
        if bytes.len() < MAGIC.len() + 4 || !bytes.starts_with(MAGIC) {
            return Err(DecodeError("not an entry of this format version"));
        }
        let (content, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(content) != u32::from_be_bytes(crc.try_into().unwrap_or_default()) {
            return Err(DecodeError("checksum mismatch"));
        }
        let mut r = Reader(bytes.slice(MAGIC.len()..bytes.len() - 4));
        let status = StatusCode::from_u16(r.u16()?).map_err(|_| DecodeError("bad status"))?;
        let version = version_from_code(r.u8()?)?;
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
        Ok(Entry::new(status, version, headers, body, trailers))
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
            b"TCE\x02\x00\x00\x00\x00",
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

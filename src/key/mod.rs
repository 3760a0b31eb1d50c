//! Keys: which requests are "the same request".
//!
//! A [`KeyExtractor`] looks at a request and either names its key or returns
//! `None`, which means bypass: the request goes to the inner service untouched.
//! Two requests coalesce exactly when their keys are equal, so a key must hold
//! everything that can change the answer. [`HttpKey`] is the default.

mod extractor;
mod http_key;
#[cfg(test)]
mod tests;

pub use self::extractor::KeyExtractor;
#[cfg_attr(not(feature = "body-keys"), allow(unused_imports))]
pub(crate) use self::http_key::put_varied;
pub use self::http_key::HttpKey;

use bytes::{BufMut, Bytes, BytesMut};
use http::Method;
use sha2::{Digest, Sha256};
use std::fmt;

/// The identity of a request: requests with equal keys share one flight and
/// one cached answer.
///
/// A key has two parts, so that everything stored for one URL can be found
/// from the URL alone:
/// - the **resource**: what the request names (for [`HttpKey`], the scheme,
///   authority, path and query);
/// - the **variant**: what selects one answer among the resource's (for
///   [`HttpKey`], the values of the keyed request headers), and the request
///   method's class, which the layer sets: `GET` for both `GET` and `HEAD`
///   (a `HEAD` is answered from a `GET`'s answer), the method itself
///   otherwise.
///
/// Two keys are equal only if all three are. [`Key::from_parts`] and
/// [`Key::with_variant`] frame every part with its length, so no choice of
/// part contents makes two different lists of parts equal.
///
/// The key an extractor makes is a *primary* key. When a resource's answers
/// vary (RFC 9111 §4.1), the layer stores each under a [selected](Key::selected)
/// key: the primary key plus the request's values of the headers the
/// answers vary on. A selected key shares its primary key's purges.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    method: Method,
    /// The resource, then the variant, then the selection.
    bytes: Bytes,
    /// Where the variant starts in `bytes`.
    split: usize,
    /// Where the selection starts in `bytes` (its length for a primary
    /// key).
    select: usize,
    /// The headers the selection is of; `None` for a primary key.
    variants: Option<crate::Variants>,
    /// Answers are shared with one flight's callers and never stored (see
    /// [`Key::flight_only`]).
    flight_only: bool,
}

impl Key {
    /// A key whose resource is these bytes, as they are, with no variant.
    /// The bytes must identify the resource on their own (a path, an id);
    /// use [`Key::from_parts`] to combine several values.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Key {
            method: Method::GET,
            split: bytes.len(),
            select: bytes.len(),
            bytes,
            variants: None,
            flight_only: false,
        }
    }

    /// A key of `bytes`, whose resource is the first `split` bytes and
    /// whose variant is the rest, both already framed.
    pub(crate) fn framed(bytes: Bytes, split: usize) -> Self {
        Key {
            method: Method::GET,
            select: bytes.len(),
            bytes,
            split,
            variants: None,
            flight_only: false,
        }
    }

    /// A key whose resource is several parts, each framed with its length,
    /// so that `["ab", "c"]` and `["a", "bc"]` give different keys, and the
    /// bytes of one key used as a part of another cannot be confused with
    /// other parts.
    pub fn from_parts<I, P>(parts: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        let mut buf = BytesMut::new();
        for part in parts {
            put_part(&mut buf, part.as_ref());
        }
        Key::new(buf.freeze())
    }

    /// The same resource with this variant: parts (header values, say),
    /// each framed with its length. Replaces any variant (and selection)
    /// the key had.
    pub fn with_variant<I, P>(self, parts: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        let mut buf = BytesMut::from(self.resource());
        for part in parts {
            put_part(&mut buf, part.as_ref());
        }
        let bytes = buf.freeze();
        Key {
            method: self.method,
            split: self.split,
            select: bytes.len(),
            bytes,
            variants: None,
            flight_only: self.flight_only,
        }
    }

    /// The key of one of this key's variants (RFC 9111 §4.1): the primary
    /// key's bytes, then `selection`, a request's values of the headers
    /// `variants` names (as the layer frames them). Replaces any selection
    /// the key had.
    pub fn selected(&self, variants: crate::Variants, selection: &[u8]) -> Self {
        let mut buf = BytesMut::with_capacity(self.select + selection.len());
        buf.put_slice(&self.bytes[..self.select]);
        buf.put_slice(selection);
        Key {
            method: self.method.clone(),
            bytes: buf.freeze(),
            split: self.split,
            select: self.select,
            variants: Some(variants),
            flight_only: self.flight_only,
        }
    }

    /// The primary key of a selected key (itself, for a primary key).
    pub fn primary(&self) -> Key {
        Key {
            method: self.method.clone(),
            bytes: self.bytes.slice(..self.select),
            split: self.split,
            select: self.select,
            variants: None,
            flight_only: self.flight_only,
        }
    }

    /// The same key, for answers that are shared with the callers of one
    /// flight and never stored: no stored answer is looked up for it, and
    /// its flight's answer is not kept. Where the layer stores answers at
    /// all (a `ttl` above zero, or the origin's freshness), the flight
    /// still takes the backend's lease, and its answer still reaches the
    /// callers that wait on it in other processes, in the lease's
    /// completion message (one too large for the message does not: each
    /// of those processes then makes one call of its own); otherwise
    /// flights are per process.
    ///
    /// For requests whose method does not let a cache reuse an answer for
    /// a later request (a `POST`, RFC 9110 §9.3.3) but whose concurrent
    /// duplicates may share one, such as the body-keyed queries of the
    /// `body-keys` feature. Two keys that differ only in this
    /// are different keys: they never share a flight.
    pub fn flight_only(mut self) -> Self {
        self.flight_only = true;
        self
    }

    /// Whether answers for this key are never stored (see
    /// [`flight_only`](Self::flight_only)).
    pub fn is_flight_only(&self) -> bool {
        self.flight_only
    }

    /// The headers a selected key's variant is selected by; `None` for a
    /// primary key.
    pub fn variants(&self) -> Option<&crate::Variants> {
        self.variants.as_ref()
    }

    /// The selection: the request's values of the [`variants`](Self::variants)
    /// headers, framed (empty for a primary key).
    pub fn selection(&self) -> &[u8] {
        &self.bytes[self.select..]
    }

    /// The resource: what the request names.
    pub fn resource(&self) -> &[u8] {
        &self.bytes[..self.split]
    }

    /// The variant: what selects one of the resource's answers (empty if
    /// the resource has one answer).
    pub fn variant(&self) -> &[u8] {
        &self.bytes[self.split..self.select]
    }

    /// The method class: `GET` for `GET` and `HEAD` requests (and for keys
    /// not made by the layer), the request's method otherwise.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The key of a request made with `method`: the layer sets the class
    /// itself, whatever the extractor built, so that only requests of one
    /// class ever share.
    pub(crate) fn for_method(mut self, method: &Method) -> Self {
        let class = if method == Method::HEAD {
            Method::GET
        } else {
            method.clone()
        };
        if self.method != class {
            self.method = class;
        }
        self
    }

    /// The first 128 bits of SHA-256 of the resource: the same for every
    /// variant and method of a resource (`RedisBackend` uses it as the
    /// cluster hash tag, so all of a resource's names share one slot).
    pub(crate) fn resource_digest(&self) -> [u8; 16] {
        truncated(Sha256::digest(self.resource()))
    }

    /// The first 128 bits of SHA-256 of the method class and variant:
    /// with [`resource_digest`](Self::resource_digest), it tells the
    /// resource's primary keys apart. The same for a selected key as for
    /// its primary key (purges name primary keys).
    pub(crate) fn variant_digest(&self) -> [u8; 16] {
        let mut hasher = Sha256::new();
        put_hashed(&mut hasher, self.method.as_str().as_bytes());
        hasher.update(self.variant());
        truncated(hasher.finalize())
    }

    /// The first 128 bits of SHA-256 of the selection, for a selected key.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn selection_digest(&self) -> Option<[u8; 16]> {
        self.variants.as_ref()?;
        Some(truncated(Sha256::digest(self.selection())))
    }

    /// How many bytes the key holds.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len() + self.method.as_str().len()
    }

    /// A short stand-in for the key in logs: the first 32 bits of each of
    /// the two hashes in `RedisBackend`'s key names (resource, then method
    /// and variant), in hex, so a log line can be matched to its Redis
    /// keys. Keys may hold credentials (`HttpKey::new().vary(AUTHORIZATION)`),
    /// so the layer logs this, never the key. Hashed only when formatted.
    pub fn fingerprint(&self) -> Fingerprint<'_> {
        Fingerprint(self)
    }
}

fn truncated(digest: impl AsRef<[u8]>) -> [u8; 16] {
    let mut out = [0; 16];
    out.copy_from_slice(&digest.as_ref()[..16]);
    out
}

fn put_hashed(hasher: &mut Sha256, part: &[u8]) {
    let mut len = BytesMut::new();
    put_len(&mut len, part.len());
    hasher.update(&len);
    hasher.update(part);
}

// The bytes alone: equal keys have equal bytes, and one hasher call is
// cheaper on every lookup than three (keys that differ only by method or
// split merely share a hash).
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (
            self.method.as_str(),
            self.resource(),
            self.variant(),
            self.selection(),
        )
            .cmp(&(
                other.method.as_str(),
                other.resource(),
                other.variant(),
                other.selection(),
            ))
    }
}

/// See [`Key::fingerprint`].
#[derive(Clone, Copy)]
pub struct Fingerprint<'a>(&'a Key);

impl fmt::Display for Fingerprint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (resource, variant) = (self.0.resource_digest(), self.0.variant_digest());
        resource[..4]
            .iter()
            .chain(&variant[..4])
            .try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("method", &self.method)
            .field("resource", &Bytes::copy_from_slice(self.resource()))
            .field("variant", &Bytes::copy_from_slice(self.variant()))
            .finish()
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Key::new(Bytes::from(s))
    }
}

impl From<&'static str> for Key {
    fn from(s: &'static str) -> Self {
        Key::new(Bytes::from_static(s.as_bytes()))
    }
}

/// A length, as an unsigned LEB128 varint: any length, no ceiling that
/// would make two long parts frame alike.
pub(crate) fn put_len(buf: &mut BytesMut, mut len: usize) {
    loop {
        let low = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            buf.put_u8(low);
            return;
        }
        buf.put_u8(low | 0x80);
    }
}

pub(crate) fn put_part(buf: &mut BytesMut, part: &[u8]) {
    put_len(buf, part.len());
    buf.put_slice(part);
}

//! Keys: which requests are "the same request".
//!
//! A [`KeyExtractor`] looks at a request and either names its key or returns
//! `None`, which means bypass: the request goes to the inner service untouched.
//! Two requests coalesce exactly when their keys are equal, so a key must hold
//! everything that can change the answer. [`HttpKey`] is the default.

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderName, Method, Request};
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
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    method: Method,
    /// The resource, then the variant.
    bytes: Bytes,
    /// Where the variant starts in `bytes`.
    split: usize,
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
            bytes,
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
    /// each framed with its length. Replaces any variant the key had.
    pub fn with_variant<I, P>(self, parts: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        let mut buf = BytesMut::from(self.resource());
        for part in parts {
            put_part(&mut buf, part.as_ref());
        }
        Key {
            method: self.method,
            bytes: buf.freeze(),
            split: self.split,
        }
    }

    /// The resource: what the request names.
    pub fn resource(&self) -> &[u8] {
        &self.bytes[..self.split]
    }

    /// The variant: what selects one of the resource's answers (empty if
    /// the resource has one answer).
    pub fn variant(&self) -> &[u8] {
        &self.bytes[self.split..]
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
    /// resource's answers apart.
    pub(crate) fn variant_digest(&self) -> [u8; 16] {
        let mut hasher = Sha256::new();
        put_hashed(&mut hasher, self.method.as_str().as_bytes());
        hasher.update(self.variant());
        truncated(hasher.finalize())
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
        (self.method.as_str(), self.resource(), self.variant()).cmp(&(
            other.method.as_str(),
            other.resource(),
            other.variant(),
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
fn put_len(buf: &mut BytesMut, mut len: usize) {
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

fn put_part(buf: &mut BytesMut, part: &[u8]) {
    put_len(buf, part.len());
    buf.put_slice(part);
}

/// Derives the key of a request, or `None` to bypass the layer.
///
/// Any `Fn(&Request<B>) -> Option<Key>` closure is an extractor:
///
/// ```
/// use tower_coalesce::{Key, KeyExtractor};
/// use http::Request;
///
/// // Coalesce by path only, whatever the query or headers.
/// let by_path = |req: &Request<()>| Some(Key::new(req.uri().path().to_owned()));
/// let req = Request::get("/items/7?x=1").body(()).unwrap();
/// assert_eq!(by_path.extract(&req), Some(Key::from("/items/7")));
/// ```
///
/// Whatever the extractor, the layer itself keeps the secure defaults of the
/// request side: only the [configured methods](crate::CoalesceConfig::methods)
/// are keyed, and the key's method class is set from the request's (so a
/// `GET` and a `POST` never share, and a `HEAD` is answered from a `GET`'s
/// answer without its body); a request carrying a
/// [credential header](crate::CoalesceConfig::credential_header) bypasses
/// unless the extractor [keys that header](KeyExtractor::keys_header).
///
/// An extractor that panics is treated as one that returned `None`: the
/// request bypasses the layer.
pub trait KeyExtractor<B>: Send + Sync + 'static {
    /// The request's key, or `None` to send it to the inner service untouched.
    fn extract(&self, req: &Request<B>) -> Option<Key>;

    /// Whether the key includes the request's values of the header `name`.
    ///
    /// It decides two things. A request carrying a credential header
    /// (`Authorization`, `Cookie`...) is keyed only if its extractor keys
    /// that header, which gives each principal its own flights and answers;
    /// otherwise it bypasses. And it decides what a response with `Vary` may
    /// do: if every header it varies on is in the key, requests that share a
    /// key already agree on them, so the response is shared and stored like
    /// any other; otherwise it goes only to the flight's followers whose
    /// values of those headers are the leader's, and is never stored. The
    /// default is `false` for every header, which is always safe.
    fn keys_header(&self, name: &HeaderName) -> bool {
        let _ = name;
        false
    }
}

impl<B, F> KeyExtractor<B> for F
where
    F: Fn(&Request<B>) -> Option<Key> + Send + Sync + 'static,
{
    fn extract(&self, req: &Request<B>) -> Option<Key> {
        self(req)
    }
}

/// The default extractor: scheme, authority, path and query as the
/// resource, and the values of the request headers that vary the answer as
/// the variant.
///
/// A request with a body that is not known to be empty gets no key (it
/// bypasses). Put a credential header among the [varying headers](HttpKey::vary)
/// to key requests that carry it: the credential itself is then in the key,
/// so that each principal has its own answers.
///
/// ```
/// use tower_coalesce::{HttpKey, KeyExtractor};
/// use http::{header, Request};
///
/// use http_body_util::Empty;
///
/// let req = |token: &str| {
///     Request::get("/me")
///         .header(header::AUTHORIZATION, token)
///         .body(Empty::<bytes::Bytes>::new())
///         .unwrap()
/// };
/// let key = HttpKey::new().vary(header::AUTHORIZATION);
/// let (alice, bob) = (req("Bearer a"), req("Bearer b"));
/// assert_ne!(key.extract(&alice), key.extract(&bob));
///
/// // Without `vary(AUTHORIZATION)`, the layer lets credentials bypass.
/// let keys = |ext: &HttpKey| KeyExtractor::<Empty<bytes::Bytes>>::keys_header(ext, &header::AUTHORIZATION);
/// assert!(!keys(&HttpKey::new()));
/// assert!(keys(&key));
/// ```
///
/// The encoding is unambiguous: two requests get equal keys exactly when
/// their targets are equal and, for each varying header, the ordered lists
/// of their values are equal.
#[derive(Debug, Clone)]
pub struct HttpKey {
    vary: Vec<HeaderName>,
    authority: bool,
}

impl Default for HttpKey {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpKey {
    /// Varying on `Accept`, `Accept-Encoding` and `Accept-Language`.
    pub fn new() -> Self {
        Self {
            vary: vec![
                header::ACCEPT,
                header::ACCEPT_ENCODING,
                header::ACCEPT_LANGUAGE,
            ],
            authority: true,
        }
    }

    /// Leaves the scheme and authority (the `Host` header) out of the key,
    /// for a service whose answers do not depend on the name it is reached
    /// by: instances behind different addresses or ports, or a proxy
    /// reached under several names, then share flights and stored answers.
    ///
    /// A server that answers for several sites by `Host` (virtual hosts)
    /// must keep the authority in the key, or one site's page is served for
    /// another's.
    pub fn without_authority(mut self) -> Self {
        self.authority = false;
        self
    }

    /// Adds a request header whose value is part of the key.
    pub fn vary(mut self, name: HeaderName) -> Self {
        if !self.vary.contains(&name) {
            self.vary.push(name);
        }
        self
    }

    /// Replaces the list of request headers whose values are part of the key.
    pub fn vary_only(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.vary = names.into_iter().collect();
        self
    }

    /// The resource part of the key of a request for `uri`: what
    /// [`Key::resource`] holds for every request this extractor keys with
    /// that target (a request without an authority in its target takes it
    /// from `Host`).
    pub fn resource(&self, uri: &http::Uri) -> Bytes {
        let mut buf = BytesMut::with_capacity(64);
        self.put_resource(&mut buf, uri, None);
        buf.freeze()
    }

    fn put_resource(&self, buf: &mut BytesMut, uri: &http::Uri, host: Option<&[u8]>) {
        let (scheme, authority) = if self.authority {
            let authority = uri
                .authority()
                .map(|a| a.as_str().as_bytes())
                .or(host)
                .unwrap_or_default();
            (uri.scheme_str().unwrap_or_default().as_bytes(), authority)
        } else {
            (&b""[..], &b""[..])
        };
        put_part(buf, scheme);
        put_part(buf, authority);
        put_part(
            buf,
            uri.path_and_query()
                .map_or("/", |pq| pq.as_str())
                .as_bytes(),
        );
    }
}

impl<B: http_body::Body> KeyExtractor<B> for HttpKey {
    fn keys_header(&self, name: &HeaderName) -> bool {
        self.vary.contains(name)
    }

    fn extract(&self, req: &Request<B>) -> Option<Key> {
        if !req.body().is_end_stream() {
            return None;
        }
        let headers = req.headers();
        let mut buf = BytesMut::with_capacity(64);
        let host = headers.get(header::HOST).map(|h| h.as_bytes());
        self.put_resource(&mut buf, req.uri(), host);
        let split = buf.len();
        // Each header present: its name, how many values, then the values.
        // The count keeps values from shifting between headers.
        for name in &self.vary {
            let values = headers.get_all(name);
            let count = values.iter().count();
            if count == 0 {
                continue;
            }
            put_part(&mut buf, name.as_str().as_bytes());
            put_len(&mut buf, count);
            for value in values {
                put_part(&mut buf, value.as_bytes());
            }
        }
        Some(Key {
            method: Method::GET,
            bytes: buf.freeze(),
            split,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn get(uri: &str) -> http::request::Builder {
        Request::get(uri)
    }

    fn key(req: http::request::Builder) -> Option<Key> {
        HttpKey::new().extract(&req.body(Full::new(Bytes::new())).unwrap())
    }

    #[test]
    fn a_fingerprint_is_short_stable_and_hides_the_key() {
        let key = Key::from("GET /me Bearer secret-token");
        let shown = key.fingerprint().to_string();
        assert_eq!(shown.len(), 16);
        assert_eq!(shown, key.fingerprint().to_string());
        assert!(!shown.contains("secret"));
        assert_ne!(shown, Key::from("other").fingerprint().to_string());
    }

    #[test]
    fn same_request_gives_same_key() {
        assert_eq!(key(get("/a?b=1")), key(get("/a?b=1")));
        assert!(key(get("/a")).is_some());
    }

    #[test]
    fn path_query_and_host_are_in_the_key() {
        assert_ne!(key(get("/a?b=1")), key(get("/a?b=2")));
        assert_ne!(key(get("/a")), key(get("/b")));
        assert_ne!(
            key(get("/a").header("host", "x")),
            key(get("/a").header("host", "y"))
        );
    }

    #[test]
    fn without_authority_names_by_any_host_share_a_key() {
        let bare = HttpKey::new().without_authority();
        let k =
            |req: http::request::Builder| bare.extract(&req.body(Full::new(Bytes::new())).unwrap());
        let by_host = k(get("/a").header("host", "127.0.0.1:3001"));
        assert!(by_host.is_some());
        assert_eq!(by_host, k(get("/a").header("host", "127.0.0.1:3002")));
        assert_eq!(by_host, k(get("http://other.example/a")));
        assert_eq!(by_host, k(get("/a")));
        // The rest of the key stays.
        assert_ne!(by_host, k(get("/b")));
        assert_ne!(
            k(get("/a").header("accept", "text/html")),
            k(get("/a").header("accept", "application/json"))
        );
    }

    #[test]
    fn varying_headers_are_in_the_key_and_others_are_not() {
        assert_ne!(
            key(get("/a").header("accept", "text/html")),
            key(get("/a").header("accept", "application/json"))
        );
        assert_eq!(
            key(get("/a").header("x-trace", "1")),
            key(get("/a").header("x-trace", "2"))
        );
    }

    #[test]
    fn a_credential_in_the_vary_list_is_keyed_by_value() {
        let ext = HttpKey::new().vary(header::COOKIE);
        let keys = |ext: &HttpKey| KeyExtractor::<Full<Bytes>>::keys_header(ext, &header::COOKIE);
        assert!(keys(&ext));
        assert!(!keys(&HttpKey::new()));
        let k = |v: &str| {
            ext.extract(
                &get("/a")
                    .header("cookie", v)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
        };
        assert!(k("s=1").is_some());
        assert_ne!(k("s=1"), k("s=2"));
    }

    #[test]
    fn header_values_cannot_shift_between_headers() {
        // Three `Accept` lines spelling another header's name and value are
        // not `Accept` + `Accept-Encoding`.
        let shifted = key(get("/a")
            .header("accept", "text/html")
            .header("accept", "accept-encoding")
            .header("accept", "gzip"));
        let two = key(get("/a")
            .header("accept", "text/html")
            .header("accept-encoding", "gzip"));
        assert_ne!(shifted, two);
        // Nor can a keyed tenant be spelled inside another header.
        let ext = HttpKey::new().vary_only([header::ACCEPT, HeaderName::from_static("x-tenant")]);
        let k =
            |req: http::request::Builder| ext.extract(&req.body(Full::new(Bytes::new())).unwrap());
        assert_ne!(
            k(get("/a")
                .header("accept", "x")
                .header("accept", "x-tenant")
                .header("accept", "victim")),
            k(get("/a").header("accept", "x").header("x-tenant", "victim"))
        );
    }

    #[test]
    fn resource_and_variant_are_apart() {
        let k = key(get("http://h/a?q").header("accept", "text/html")).unwrap();
        assert_eq!(
            k.resource(),
            &HttpKey::new().resource(&"http://h/a?q".parse().unwrap())[..]
        );
        assert!(!k.variant().is_empty());
        // A plain request of the same target has the same resource.
        assert_eq!(key(get("http://h/a?q")).unwrap().resource(), k.resource());
        assert!(key(get("http://h/a?q")).unwrap().variant().is_empty());
        // Bytes cannot move between the resource and the variant.
        assert_ne!(
            Key::new("ab").with_variant(["c"]),
            Key::new("a").with_variant(["bc"])
        );
        assert_ne!(
            Key::new("a").resource_digest(),
            Key::new("b").resource_digest()
        );
        let v = Key::new("a").with_variant(["x"]);
        assert_eq!(v.resource_digest(), Key::new("a").resource_digest());
        assert_ne!(v.variant_digest(), Key::new("a").variant_digest());
    }

    #[test]
    fn the_method_class_joins_head_with_get_and_parts_others() {
        let base = Key::new("/a");
        assert_eq!(
            base.clone().for_method(&Method::HEAD),
            base.clone().for_method(&Method::GET)
        );
        assert_ne!(
            base.clone().for_method(&Method::POST),
            base.clone().for_method(&Method::GET)
        );
        assert_eq!(base.clone().for_method(&Method::HEAD).method(), Method::GET);
        assert_ne!(
            base.clone().for_method(&Method::POST).variant_digest(),
            base.for_method(&Method::GET).variant_digest()
        );
    }

    #[test]
    fn long_parts_are_framed_without_a_ceiling() {
        let mut buf = BytesMut::new();
        put_len(&mut buf, 300);
        assert_eq!(&buf[..], [0xac, 0x02]);
        let mut buf = BytesMut::new();
        put_len(&mut buf, 0);
        assert_eq!(&buf[..], [0]);
    }

    #[test]
    fn a_request_with_a_body_bypasses() {
        let req = get("/a").body(Full::new(Bytes::from_static(b"x"))).unwrap();
        assert_eq!(HttpKey::new().extract(&req), None);
    }

    #[test]
    fn parts_are_separated() {
        assert_ne!(Key::from_parts(["ab", "c"]), Key::from_parts(["a", "bc"]));
    }

    #[test]
    fn header_bytes_that_are_not_utf8_make_distinct_keys() {
        let v1 = http::HeaderValue::from_bytes(b"\xff\xfe").unwrap();
        let v2 = http::HeaderValue::from_bytes(b"\xff\xfd").unwrap();
        assert_ne!(
            key(get("/a").header("accept", v1)),
            key(get("/a").header("accept", v2))
        );
    }

    mod equivalence {
        //! Two requests get equal keys if and only if their keyed parts are
        //! equal: the target, and for each keyed header the ordered list of
        //! its values.
        use super::*;
        use proptest::prelude::*;

        const NAMES: [&str; 3] = ["accept", "accept-encoding", "x-tenant"];

        #[derive(Debug, Clone, PartialEq)]
        struct Asked {
            path: String,
            // Per keyed header, its values in order.
            values: Vec<Vec<String>>,
        }

        fn asked() -> impl Strategy<Value = Asked> {
            // Small alphabets, names among the values: collisions are likely
            // if the encoding allows them.
            let value = prop_oneof![
                Just("accept".to_owned()),
                Just("x-tenant".to_owned()),
                Just("gzip".to_owned()),
                "[a-c,]{0,3}",
            ];
            (
                prop_oneof![Just("/a".to_owned()), Just("/a?x".to_owned()), "/[ab]{0,2}"],
                proptest::collection::vec(proptest::collection::vec(value, 0..3), 3),
            )
                .prop_map(|(path, values)| Asked { path, values })
        }

        fn key_of(asked: &Asked) -> Key {
            let ext = HttpKey::new().vary_only(NAMES.map(HeaderName::from_static));
            let mut req = Request::get(asked.path.as_str());
            for (name, values) in NAMES.iter().zip(&asked.values) {
                for v in values {
                    req = req.header(*name, v.as_str());
                }
            }
            ext.extract(&req.body(Full::new(Bytes::new())).unwrap())
                .unwrap()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn equal_keys_iff_equal_keyed_parts(a in asked(), b in asked()) {
                prop_assert_eq!(key_of(&a) == key_of(&b), a == b);
            }

            #[test]
            fn a_request_equals_itself(a in asked()) {
                prop_assert_eq!(key_of(&a), key_of(&a.clone()));
            }
        }
    }
}

//! Keys: which requests are "the same request".
//!
//! A [`KeyExtractor`] looks at a request and either names its key or returns
//! `None`, which means bypass: the request goes to the inner service untouched.
//! Two requests coalesce exactly when their keys are equal, so a key must hold
//! everything that can change the answer. [`HttpKey`] is the default.

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderName, Method, Request};
use std::fmt;

/// The identity of a request: requests with equal keys share one flight and
/// one cached answer.
///
/// A key is opaque bytes. Build one from anything that decides the answer:
/// [`Key::from_parts`] separates the parts unambiguously.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Bytes);

impl Key {
    /// A key made of these bytes, as they are.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Key(bytes.into())
    }

    /// A key made of several parts, each length-prefixed, so that
    /// `["ab", "c"]` and `["a", "bc"]` give different keys.
    pub fn from_parts<I, P>(parts: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        let mut buf = BytesMut::new();
        for part in parts {
            put_part(&mut buf, part.as_ref());
        }
        Key(buf.freeze())
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Key {
    /// A short stand-in for the key in logs: the first 8 bytes of its
    /// SHA-256, in hex — the start of the hash in `RedisBackend`'s key
    /// names, so a log line can be matched to its Redis keys. Keys may hold
    /// credentials (`HttpKey::new().vary(AUTHORIZATION)`), so the layer logs
    /// this, never the key. Hashed only when formatted.
    pub fn fingerprint(&self) -> Fingerprint<'_> {
        Fingerprint(self)
    }
}

/// See [`Key::fingerprint`].
#[derive(Clone, Copy)]
pub struct Fingerprint<'a>(&'a Key);

impl fmt::Display for Fingerprint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.0.as_bytes());
        digest[..8].iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", self.0)
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Key(Bytes::from(s))
    }
}

impl From<&'static str> for Key {
    fn from(s: &'static str) -> Self {
        Key(Bytes::from_static(s.as_bytes()))
    }
}

fn put_part(buf: &mut BytesMut, part: &[u8]) {
    buf.put_u32(u32::try_from(part.len()).unwrap_or(u32::MAX));
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
/// // Coalesce by path only, whatever the method or headers.
/// let by_path = |req: &Request<()>| Some(Key::new(req.uri().path().to_owned()));
/// let req = Request::get("/items/7?x=1").body(()).unwrap();
/// assert_eq!(by_path.extract(&req), Some(Key::from("/items/7")));
/// ```
///
/// An extractor that panics is treated as one that returned `None`: the
/// request bypasses the layer.
pub trait KeyExtractor<B>: Send + Sync + 'static {
    /// The request's key, or `None` to send it to the inner service untouched.
    fn extract(&self, req: &Request<B>) -> Option<Key>;

    /// Whether the key includes the request's values of the header `name`.
    ///
    /// It decides what a response with `Vary` may do. If every header it
    /// varies on is in the key, requests that share a key already agree on
    /// them: the response is shared and stored like any other. Otherwise it
    /// goes only to the flight's followers whose values of those headers are
    /// the leader's, and is never stored. The default is `false` for every
    /// header, which is always safe.
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

/// The default extractor: method, authority, path and query, plus the values
/// of the request headers that vary the answer.
///
/// It applies the secure defaults of the request side:
/// - only `GET` and `HEAD` get a key (see [`HttpKey::methods`]);
/// - a request with a body that is not known to be empty bypasses;
/// - a request carrying `Authorization` or `Cookie` bypasses, unless that
///   header is one of the [varying headers](HttpKey::vary), which puts the
///   credential itself into the key so that each principal has its own.
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
/// // Without `vary(AUTHORIZATION)`, credentials mean bypass.
/// assert_eq!(HttpKey::new().extract(&alice), None);
/// ```
#[derive(Debug, Clone)]
pub struct HttpKey {
    methods: Vec<Method>,
    vary: Vec<HeaderName>,
    authority: bool,
}

impl Default for HttpKey {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpKey {
    /// `GET` and `HEAD`, varying on `Accept`, `Accept-Encoding` and `Accept-Language`.
    pub fn new() -> Self {
        Self {
            methods: vec![Method::GET, Method::HEAD],
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

    /// The methods that may coalesce; requests with any other method bypass.
    /// Only safe methods (RFC 9110 §9.2.1) belong here.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
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

    fn varies_on(&self, name: &HeaderName) -> bool {
        self.vary.contains(name)
    }
}

impl<B: http_body::Body> KeyExtractor<B> for HttpKey {
    fn keys_header(&self, name: &HeaderName) -> bool {
        self.varies_on(name)
    }

    fn extract(&self, req: &Request<B>) -> Option<Key> {
        if !self.methods.contains(req.method()) || !req.body().is_end_stream() {
            return None;
        }
        let headers = req.headers();
        for credential in [header::AUTHORIZATION, header::COOKIE] {
            if headers.contains_key(&credential) && !self.varies_on(&credential) {
                return None;
            }
        }
        let uri = req.uri();
        let (scheme, authority) = if self.authority {
            let authority = uri
                .authority()
                .map(|a| a.as_str().as_bytes())
                .or_else(|| headers.get(header::HOST).map(|h| h.as_bytes()))
                .unwrap_or_default();
            (uri.scheme_str().unwrap_or_default().as_bytes(), authority)
        } else {
            (&b""[..], &b""[..])
        };
        let mut buf = BytesMut::with_capacity(64);
        put_part(&mut buf, req.method().as_str().as_bytes());
        put_part(&mut buf, scheme);
        put_part(&mut buf, authority);
        put_part(
            &mut buf,
            uri.path_and_query()
                .map_or("/", |pq| pq.as_str())
                .as_bytes(),
        );
        for name in &self.vary {
            let mut values = headers.get_all(name).iter().peekable();
            if values.peek().is_none() {
                continue;
            }
            put_part(&mut buf, name.as_str().as_bytes());
            for value in values {
                put_part(&mut buf, value.as_bytes());
            }
        }
        Some(Key(buf.freeze()))
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
    fn path_query_host_and_method_are_in_the_key() {
        assert_ne!(key(get("/a?b=1")), key(get("/a?b=2")));
        assert_ne!(key(get("/a")), key(get("/b")));
        assert_ne!(
            key(get("/a").header("host", "x")),
            key(get("/a").header("host", "y"))
        );
        assert_ne!(key(get("/a")), key(Request::head("/a")));
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
    fn unsafe_methods_bypass() {
        assert_eq!(key(Request::post("/a")), None);
        assert_eq!(key(Request::delete("/a")), None);
    }

    #[test]
    fn credentials_bypass_unless_they_vary_the_key() {
        assert_eq!(key(get("/a").header("cookie", "s=1")), None);
        assert_eq!(key(get("/a").header("authorization", "Basic x")), None);
        let ext = HttpKey::new().vary(header::COOKIE);
        let a = ext.extract(
            &get("/a")
                .header("cookie", "s=1")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        );
        let b = ext.extract(
            &get("/a")
                .header("cookie", "s=2")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        );
        assert!(a.is_some());
        assert_ne!(a, b);
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
}

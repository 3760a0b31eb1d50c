//! [`HttpKey`], the default extractor.

use super::{put_len, put_part, Key, KeyExtractor};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderName, HeaderValue, Request};

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
    authority: Authority,
}

/// What the key holds for the scheme and authority.
#[derive(Debug, Clone)]
enum Authority {
    /// The request's: its target's, or its `Host` for an origin-form target.
    Request,
    /// This value, whatever the request names, and no scheme.
    Fixed(HeaderValue),
    /// Nothing.
    Left,
}

impl Default for HttpKey {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpKey {
    /// Keying `Accept` (besides the target).
    ///
    /// `Accept-Encoding` and `Accept-Language` are not keyed: requests that
    /// differ only in them share flights and answers unless the answer
    /// varies on them — by its `Vary`, a `Content-Encoding` other than
    /// `identity`, or a `Content-Language` — and then each stored variant
    /// goes only to the requests whose values match (RFC 9111 §4.1). To
    /// key them up front as earlier releases did, add them with [`vary`](Self::vary)
    /// (or use [`with_accept_headers`](Self::with_accept_headers)).
    pub fn new() -> Self {
        Self {
            vary: vec![header::ACCEPT],
            authority: Authority::Request,
        }
    }

    /// Also keys `Accept-Encoding` and `Accept-Language` up front, as the
    /// default key did before 0.3: requests that differ in them never share,
    /// whatever the answer varies on.
    pub fn with_accept_headers(self) -> Self {
        self.vary(header::ACCEPT_ENCODING)
            .vary(header::ACCEPT_LANGUAGE)
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
        self.authority = Authority::Left;
        self
    }

    /// Keys `authority` in place of the request's scheme and authority:
    /// every request is keyed as if it named that host, whatever its target
    /// or `Host` say. For a service reached under several names or
    /// addresses that answers as one site, which `authority` names: its
    /// instances share keys, as with
    /// [`without_authority`](Self::without_authority), while another
    /// service keyed with another name never shares them, even through one
    /// backend.
    ///
    /// ```
    /// use tower_coalesce::{HttpKey, KeyExtractor};
    /// use http::{header, HeaderValue, Request};
    /// use http_body_util::Empty;
    ///
    /// let req = |host: &str| {
    ///     Request::get("/products/7")
    ///         .header(header::HOST, host)
    ///         .body(Empty::<bytes::Bytes>::new())
    ///         .unwrap()
    /// };
    /// let shop = HttpKey::new().authority(HeaderValue::from_static("shop.example"));
    /// let blog = HttpKey::new().authority(HeaderValue::from_static("blog.example"));
    /// let (a, b) = (req("10.0.0.1:8080"), req("10.0.0.2:8080"));
    /// assert_eq!(shop.extract(&a), shop.extract(&b));
    /// assert_ne!(shop.extract(&a), blog.extract(&a));
    /// ```
    pub fn authority(mut self, authority: HeaderValue) -> Self {
        self.authority = Authority::Fixed(authority);
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
        let (scheme, authority) = match &self.authority {
            Authority::Request => {
                let authority = uri
                    .authority()
                    .map(|a| a.as_str().as_bytes())
                    .or(host)
                    .unwrap_or_default();
                (uri.scheme_str().unwrap_or_default().as_bytes(), authority)
            }
            Authority::Fixed(authority) => (&b""[..], authority.as_bytes()),
            Authority::Left => (&b""[..], &b""[..]),
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
        Some(self.key(req.uri(), req.headers()))
    }

    fn extract_head(&self, head: &http::request::Parts) -> Option<Key> {
        Some(self.key(&head.uri, &head.headers))
    }
}

impl HttpKey {
    /// The key of a `GET` of `uri` with `headers`.
    fn key(&self, uri: &http::Uri, headers: &http::HeaderMap) -> Key {
        let mut buf = BytesMut::with_capacity(64);
        self.put_target(&mut buf, uri, headers);
        let split = buf.len();
        put_varied(&mut buf, &self.vary, headers);
        Key::framed(buf.freeze(), split)
    }

    /// Appends the scheme, authority (from `Host` for an origin-form
    /// target) and path and query, as this extractor keys them: three
    /// parts.
    #[cfg_attr(not(feature = "body-keys"), allow(dead_code))]
    pub(crate) fn put_target(
        &self,
        buf: &mut BytesMut,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) {
        let host = headers.get(header::HOST).map(|h| h.as_bytes());
        self.put_resource(buf, uri, host);
    }

    /// The headers whose values are in the key.
    #[cfg_attr(not(feature = "body-keys"), allow(dead_code))]
    pub(crate) fn varied(&self) -> &[HeaderName] {
        &self.vary
    }
}

/// Appends the values of the headers `names` in `headers`: for each header
/// present, its name, how many values, then the values. The count keeps
/// values from shifting between headers.
pub(crate) fn put_varied(buf: &mut BytesMut, names: &[HeaderName], headers: &http::HeaderMap) {
    for name in names {
        let values = headers.get_all(name);
        let count = values.iter().count();
        if count == 0 {
            continue;
        }
        put_part(buf, name.as_str().as_bytes());
        put_len(buf, count);
        for value in values {
            put_part(buf, value.as_bytes());
        }
    }
}

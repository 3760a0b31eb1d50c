//! [`Route`]: which requests are keyed by their body, how their body is
//! read, and what their answers may do.

use http::{header, HeaderMap, HeaderName, Method};
use std::collections::HashSet;
use std::sync::Arc;

/// How a route's body is read into its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// Canonical JSON; a body that is not JSON (or has a duplicate key) is
    /// keyed by its bytes.
    Json,
    /// A GraphQL request: the selected operation, normalised, and canonical
    /// variables; anything that cannot be read so bypasses.
    #[cfg(feature = "graphql")]
    GraphQl,
}

/// A route whose requests are keyed by what their body means: a method and
/// path, the body's media types, and what else goes into the key.
///
/// Only requests whose answer depends on nothing but the key belong here:
/// reads that happen to send their question in a body (searches, lookups,
/// GraphQL queries). A route is matched by its method and exact path; a
/// request of the route is keyed only if its `Content-Type` is one of the
/// route's, it has no `Content-Encoding`, and its body was read whole by
/// [`BufferLayer`](super::BufferLayer) (at most [`limit`](Self::limit)
/// bytes, no trailers); every other request of the route bypasses.
///
/// Defaults, and why:
/// - `Accept` is keyed (as [`HttpKey::new`](crate::HttpKey::new) keys it):
///   the answer's format may depend on it. Credentials are not: a request
///   carrying `Authorization`, `Cookie` or another
///   [credential header](crate::CoalesceConfig::credential_header)
///   bypasses unless the route keys it with [`vary`](Self::vary).
/// - Answers are shared by the requests of one flight, never stored
///   ([`Key::flight_only`](crate::Key::flight_only)): HTTP never reuses the
///   answer to a `POST` for a later one (RFC 9110 §9.3.3).
///   [`stored`](Self::stored) opts in.
/// - The body is in the key's *resource*, so the purge of the route's URL
///   (which a successful write to it makes, see
///   [`invalidate_on_unsafe`](crate::CoalesceConfig::invalidate_on_unsafe))
///   does not reach its stored answers; purge them by tag, or
///   [`purged_with_url`](Self::purged_with_url).
#[derive(Debug, Clone)]
pub struct Route {
    pub(crate) methods: Vec<Method>,
    pub(crate) path: Box<str>,
    pub(crate) form: Form,
    /// Media types (lowercase, without parameters).
    pub(crate) content_types: Vec<Box<str>>,
    pub(crate) vary: Vec<HeaderName>,
    pub(crate) limit: usize,
    pub(crate) stored: bool,
    pub(crate) purged_with_url: bool,
    /// Persisted query hashes allowed without a document.
    #[cfg_attr(not(feature = "graphql"), allow(dead_code))]
    pub(crate) persisted: Arc<HashSet<Box<str>>>,
    /// The normal forms of documents read lately.
    #[cfg(feature = "graphql")]
    pub(crate) documents: super::graphql::Documents,
}

impl Route {
    /// The body limit unless [`limit`](Self::limit) says otherwise: 64 KiB.
    pub const DEFAULT_LIMIT: usize = 64 * 1024;

    fn new(methods: Vec<Method>, path: String, form: Form) -> Self {
        Self {
            methods,
            path: path.into(),
            form,
            content_types: vec!["application/json".into()],
            vary: vec![header::ACCEPT],
            limit: Self::DEFAULT_LIMIT,
            stored: false,
            purged_with_url: false,
            persisted: Arc::default(),
            #[cfg(feature = "graphql")]
            documents: super::graphql::Documents::new(0),
        }
    }

    /// Requests of `method` to `path` (exactly; the query may be anything,
    /// and is keyed as written) with an `application/json` body, keyed by
    /// its canonical form: object members sorted by key, insignificant
    /// whitespace and escapes gone, numbers as written (see
    /// [`canonical_json`](super::canonical_json)). A body that is not
    /// valid JSON, or that has an object with a duplicate key (parsers
    /// disagree on which value wins), is keyed by its bytes, apart from
    /// every canonical form: it shares only with the very same bytes.
    pub fn json(method: Method, path: impl Into<String>) -> Self {
        Self::new(vec![method], path.into(), Form::Json)
    }

    /// GraphQL requests to `path`: `POST`s with an `application/json` body,
    /// and `GET`s with the request in the query (`query`, `operationName`,
    /// `variables`, `extensions`), both keyed by the operation
    /// `operationName` selects (or the document's only one), printed
    /// without whitespace, comments or commas, with the fragments of the
    /// document, and the canonical JSON of `variables` and `extensions`.
    ///
    /// Bypass: mutations and subscriptions (from the parsed document, so
    /// a comment or a string cannot hide one); a document the parser
    /// rejects (the server's parser may read it otherwise, perhaps as a
    /// mutation); a body that is not valid JSON or has a duplicate key;
    /// an `operationName` naming no operation, or none for a document of
    /// several; a document with definitions other than operations and
    /// fragments; and persisted queries sent by hash alone
    /// (`extensions.persistedQuery.sha256Hash` without `query`), unless
    /// the hash is [allow-listed](Self::persisted_queries).
    #[cfg(feature = "graphql")]
    #[cfg_attr(docsrs, doc(cfg(feature = "graphql")))]
    pub fn graphql(path: impl Into<String>) -> Self {
        let route = Self::new(
            vec![Method::POST, Method::GET, Method::HEAD],
            path.into(),
            Form::GraphQl,
        );
        route.document_cache(Self::DEFAULT_DOCUMENT_CACHE)
    }

    /// The document cache of a GraphQL route unless
    /// [`document_cache`](Self::document_cache) says otherwise: 4 MiB.
    #[cfg(feature = "graphql")]
    #[cfg_attr(docsrs, doc(cfg(feature = "graphql")))]
    pub const DEFAULT_DOCUMENT_CACHE: u64 = 4 * 1024 * 1024;

    /// How many bytes of documents a GraphQL route keeps read, by their
    /// text and operation name, with their normal form or the news that
    /// they bypass (zero: none, every document is parsed). Clients send a
    /// few documents again and again with other variables; reading one
    /// again costs a hash of its text instead of a parse (see
    /// `BENCHMARKS.md`).
    #[cfg(feature = "graphql")]
    #[cfg_attr(docsrs, doc(cfg(feature = "graphql")))]
    pub fn document_cache(mut self, bytes: u64) -> Self {
        self.documents = super::graphql::Documents::new(bytes);
        self
    }

    /// Also accepts bodies of this media type (such as
    /// `application/vnd.api+json`), compared without case or parameters.
    pub fn content_type(mut self, media_type: &str) -> Self {
        let media_type: Box<str> = media_type.trim().to_ascii_lowercase().into();
        if !self.content_types.contains(&media_type) {
            self.content_types.push(media_type);
        }
        self
    }

    /// Adds a request header whose values are part of the key, such as a
    /// tenant or locale header the handler reads, or a credential
    /// (`Authorization`): each principal then has its own flights.
    pub fn vary(mut self, name: HeaderName) -> Self {
        if !self.vary.contains(&name) {
            self.vary.push(name);
        }
        self
    }

    /// Replaces the list of keyed request headers (default: `Accept`).
    ///
    /// A request of this route carrying a header that the [`BodyKeys`](super::BodyKeys)'
    /// fallback [`HttpKey`](crate::HttpKey) or another route keys, but
    /// this route does not, bypasses (see the [module](super) documentation):
    /// leaving out `Accept`, which the default `HttpKey` keys, makes nearly
    /// every request bypass unless the fallback leaves it out too.
    pub fn vary_only(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.vary = names.into_iter().collect();
        self
    }

    /// Reads bodies of at most `bytes`; a larger one goes on as it
    /// arrives, and its request bypasses.
    pub fn limit(mut self, bytes: usize) -> Self {
        self.limit = bytes;
        self
    }

    /// Lets the route's answers be stored and served to later requests, as
    /// the layer's freshness settings and the answers' `Cache-Control`
    /// allow: the route's own assertion that an answer stays right for
    /// every later request with the same key until it expires or is
    /// purged. Make writes purge what they change by tag
    /// ([`tag_header`](crate::CoalesceConfig::tag_header),
    /// [`Purger::purge_tag`](crate::Purger::purge_tag)), or with
    /// [`purged_with_url`](Self::purged_with_url).
    pub fn stored(mut self) -> Self {
        self.stored = true;
        self
    }

    /// Puts the route's target alone in the key's resource, and the body in
    /// its variant, so that a purge of the route's URL — such as the one a
    /// successful `POST` to it makes, a GraphQL mutation say — purges every
    /// stored answer of the route. The price: all of them are then one
    /// resource (with `RedisBackend`, one cluster slot).
    pub fn purged_with_url(mut self) -> Self {
        self.purged_with_url = true;
        self
    }

    /// GraphQL persisted queries whose hashes (the hex
    /// `extensions.persistedQuery.sha256Hash`) may be keyed without their
    /// document: the application asserts that each is a query, since no
    /// document says so. Others sent by hash alone bypass.
    #[cfg(feature = "graphql")]
    #[cfg_attr(docsrs, doc(cfg(feature = "graphql")))]
    pub fn persisted_queries<I, S>(mut self, hashes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut set = HashSet::clone(&self.persisted);
        set.extend(
            hashes
                .into_iter()
                .map(|h| h.into().to_ascii_lowercase().into()),
        );
        self.persisted = Arc::new(set);
        self
    }

    /// Whether this route takes requests of `method` to `path`.
    pub(crate) fn takes(&self, method: &Method, path: &str) -> bool {
        *self.path == *path && self.methods.contains(method)
    }

    /// Whether the request's body is read from its body (not its URL).
    pub(crate) fn reads_body(method: &Method) -> bool {
        method != Method::GET && method != Method::HEAD
    }

    /// Whether a request with these headers may have its body read: one of
    /// the route's media types, and no `Content-Encoding`.
    pub(crate) fn readable(&self, headers: &HeaderMap) -> bool {
        if headers.contains_key(header::CONTENT_ENCODING) {
            return false;
        }
        let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
            return false;
        };
        let Ok(content_type) = content_type.to_str() else {
            return false;
        };
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        self.content_types
            .iter()
            .any(|t| t.eq_ignore_ascii_case(essence))
    }
}

//! How [`BodyKeys`] keys a request: which route, which form of its body,
//! and how the parts are framed.

use super::route::Form;
use super::{BodyKeys, RequestBody, Route};
use crate::key::{put_part, put_varied};
use crate::{Key, KeyExtractor};
use bytes::BytesMut;
use http::{header, HeaderMap, HeaderName, Method, Request, Uri};

/// The first part of every body-keyed key: not a URI scheme (the first
/// part of an [`HttpKey`](crate::HttpKey) resource) nor a header name (the
/// first part of its variant), so no body-keyed key equals a URL's key.
const MARKER: &[u8] = b"body key";

/// The form a body is keyed in: canonical JSON and raw bytes never share
/// a key, whatever their bytes.
pub(super) const JSON: &[u8] = b"json";
pub(super) const BYTES: &[u8] = b"bytes";
#[cfg(feature = "graphql")]
const GRAPHQL: &[u8] = b"graphql";

impl<B: http_body::Body> KeyExtractor<B> for BodyKeys {
    fn extract(&self, req: &Request<B>) -> Option<Key> {
        let (method, uri, headers) = (req.method(), req.uri(), req.headers());
        let Some(route) = self.routes.of(method, uri.path()) else {
            return self.fallback(req);
        };
        if self.unkeyed_header(&route.vary, headers)
            || headers.contains_key(header::CONTENT_ENCODING)
        {
            return None;
        }
        if !Route::reads_body(method) {
            return self.in_query(route, req);
        }
        if !route.readable(headers) {
            return None;
        }
        let body = &req.extensions().get::<RequestBody>()?.0;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .map_or(&b""[..], |v| v.as_bytes());
        let (form, canonical) = match route.form {
            Form::Json => match super::canonical_json(body) {
                Some(canonical) => (JSON, canonical),
                None => (BYTES, body.to_vec()),
            },
            #[cfg(feature = "graphql")]
            Form::GraphQl => (
                GRAPHQL,
                super::graphql::canonical_body(body, &route.persisted, &route.documents)?,
            ),
        };
        Some(self.key(route, uri, headers, (form, content_type, &canonical)))
    }

    /// Every header a route or the fallback keys: the layer lets a
    /// credential through if this says so, and [`extract`](Self::extract)
    /// then bypasses the requests whose own route does not key it.
    fn keys_header(&self, name: &HeaderName) -> bool {
        self.keyed.contains(name)
    }

    /// The fallback's: what a write purges is keyed by URL.
    fn extract_head(&self, head: &http::request::Parts) -> Option<Key> {
        KeyExtractor::<B>::extract_head(&self.fallback, head)
    }
}

impl BodyKeys {
    /// A request no route takes: the fallback's key for a `GET` or `HEAD`.
    fn fallback<B: http_body::Body>(&self, req: &Request<B>) -> Option<Key> {
        let safe = req.method() == Method::GET || req.method() == Method::HEAD;
        if !safe || self.unkeyed_header(self.fallback.varied(), req.headers()) {
            return None;
        }
        self.fallback.extract(req)
    }

    /// Whether `headers` has a header some route keys but `keyed` does not.
    fn unkeyed_header(&self, keyed: &[HeaderName], headers: &HeaderMap) -> bool {
        self.keyed
            .iter()
            .any(|name| !keyed.contains(name) && headers.contains_key(name))
    }

    /// A request of the route with its question in the URL (GraphQL over
    /// `GET`); one without a GraphQL parameter is keyed by URL.
    #[cfg_attr(not(feature = "graphql"), allow(unused_variables))]
    fn in_query<B: http_body::Body>(&self, route: &Route, req: &Request<B>) -> Option<Key> {
        match route.form {
            #[cfg(feature = "graphql")]
            Form::GraphQl => {
                let uri = req.uri();
                let query = uri.query().unwrap_or_default();
                if !has_graphql_parameter(query) {
                    return self.fallback(req);
                }
                let (canonical, rest) =
                    super::graphql::canonical_query(query, &route.persisted, &route.documents)?;
                let path = uri.path();
                let target = match rest.is_empty() {
                    true => path.to_owned(),
                    false => format!("{path}?{rest}"),
                };
                let mut parts = uri.clone().into_parts();
                parts.path_and_query = Some(target.parse().ok()?);
                let target = Uri::from_parts(parts).ok()?;
                Some(self.key(route, &target, req.headers(), (GRAPHQL, b"", &canonical)))
            }
            // A JSON route of `GET` has no body to key.
            Form::Json => None,
        }
    }

    /// The key of a request of `route` to `target` whose body reads as
    /// `canonical` in `form`.
    pub(super) fn key(
        &self,
        route: &Route,
        target: &Uri,
        headers: &HeaderMap,
        (form, content_type, canonical): (&[u8], &[u8], &[u8]),
    ) -> Key {
        let mut buf = BytesMut::with_capacity(canonical.len() + 128);
        let body = |buf: &mut BytesMut| {
            put_part(buf, content_type);
            put_part(buf, canonical);
        };
        let split = if route.purged_with_url {
            // The resource a `GET` of the target has: its purge reaches
            // this key.
            self.fallback.put_target(&mut buf, target, headers);
            let split = buf.len();
            put_part(&mut buf, MARKER);
            put_part(&mut buf, form);
            body(&mut buf);
            split
        } else {
            put_part(&mut buf, MARKER);
            put_part(&mut buf, form);
            self.fallback.put_target(&mut buf, target, headers);
            body(&mut buf);
            buf.len()
        };
        put_varied(&mut buf, &route.vary, headers);
        let key = Key::framed(buf.freeze(), split);
        match route.stored {
            true => key,
            false => key.flight_only(),
        }
    }
}

/// Whether a URL query names a GraphQL request's parameter.
#[cfg(feature = "graphql")]
fn has_graphql_parameter(query: &str) -> bool {
    url::form_urlencoded::parse(query.as_bytes()).any(|(name, _)| {
        matches!(
            name.as_ref(),
            "query" | "operationName" | "variables" | "extensions"
        )
    })
}

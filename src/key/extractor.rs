//! [`KeyExtractor`]: what turns a request into its key.

use super::Key;
use http::{HeaderName, Request};

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

    /// The key a bodiless request with this head would get, or `None` if
    /// the extractor cannot tell from a head alone (the default).
    ///
    /// It finds what a successful unsafe request (`PUT`, `POST`,
    /// `DELETE`...) invalidates (RFC 9111 §4.4): the stored answers of its
    /// target URI and of a same-origin `Location` or `Content-Location`
    /// in its response, each asked for as a `GET` with the request's
    /// headers. The request itself is gone to the inner service by the
    /// time its response names those, so only the head is left. Without
    /// this method the layer still purges the target URI, from the
    /// request's own [`extract`](KeyExtractor::extract) with its method
    /// set to `GET`, but not `Location` or `Content-Location`.
    /// [`HttpKey`](crate::HttpKey) implements it.
    fn extract_head(&self, head: &http::request::Parts) -> Option<Key> {
        let _ = head;
        None
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

//! Revalidation (RFC 9111 §4.3): a refresh of a stored answer with
//! validators asks the origin whether it changed, and a `304` renews the
//! stored answer's headers and freshness without a new body.

use crate::Entry;
use http::header::{self, HeaderMap, HeaderName};
use http::{response, Request, Response, StatusCode};

/// Whether a stored answer can be revalidated: it has an `ETag` or a
/// `Last-Modified`.
pub(crate) fn has_validators(stored: &Entry) -> bool {
    let headers = stored.headers();
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

/// Adds the stale answer's validators to the refresh's request (§4.3.1):
/// its entity tag as `If-None-Match`, its `Last-Modified` as
/// `If-Modified-Since`. Whether any was added.
pub(crate) fn ask_if_changed<B>(req: &mut Request<B>, stale: &Entry) -> bool {
    let stored = stale.headers();
    let headers = req.headers_mut();
    let mut asked = false;
    if let Some(etag) = stored.get(header::ETAG) {
        headers.insert(header::IF_NONE_MATCH, etag.clone());
        asked = true;
    }
    if let Some(modified) = stored.get(header::LAST_MODIFIED) {
        headers.insert(header::IF_MODIFIED_SINCE, modified.clone());
        asked = true;
    }
    asked
}

/// Headers a `304` does not change in the stored answer: its length
/// (§3.2), and the connection's own (§3.1).
const KEPT: [HeaderName; 8] = [
    header::CONTENT_LENGTH,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The stale answer renewed by a `304` (§4.3.4): its status, body and
/// trailers, with every header the `304` carries replacing the stored ones
/// (but the length). `None` when the `304` names another representation:
/// an entity tag that is not the stored one (a strong one compared
/// strongly, a weak one weakly).
pub(crate) fn renewed(
    stale: &Entry,
    not_modified: &response::Parts,
) -> Option<(Entry, response::Parts)> {
    debug_assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    if let Some(tag) = not_modified.headers.get(header::ETAG) {
        let stored = stale.headers().get(header::ETAG)?;
        let opaque = |t: &[u8]| t.strip_prefix(b"W/").unwrap_or(t).to_vec();
        let same = if tag.as_bytes().starts_with(b"W/") {
            opaque(tag.as_bytes()) == opaque(stored.as_bytes())
        } else {
            tag == stored
        };
        if !same {
            return None;
        }
    }
    let mut headers: HeaderMap = stale.headers().clone();
    // The stored `Age` was this cache's; the 304's, if any, is the new one.
    headers.remove(header::AGE);
    for name in not_modified.headers.keys() {
        if KEPT.contains(name) {
            continue;
        }
        headers.remove(name);
        for value in not_modified.headers.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let mut head = Response::new(()).into_parts().0;
    head.status = stale.status();
    head.version = stale.version();
    head.headers = headers.clone();
    let entry = Entry::new(
        stale.status(),
        stale.version(),
        headers,
        stale.body().clone(),
        stale.trailers().cloned(),
    );
    Some((entry, head))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::Version;

    fn stale(headers: &[(&str, &str)]) -> Entry {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Entry::new(
            StatusCode::OK,
            Version::HTTP_11,
            map,
            Bytes::from_static(b"body"),
            None,
        )
    }

    fn not_modified(headers: &[(&str, &str)]) -> response::Parts {
        let mut b = Response::builder().status(304);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_stale_answers_validators_are_sent() {
        let mut req = Request::get("/").body(()).unwrap();
        let entry = stale(&[
            ("etag", "\"v1\""),
            ("last-modified", "Tue, 01 Dec 2026 00:00:00 GMT"),
        ]);
        assert!(ask_if_changed(&mut req, &entry));
        assert_eq!(req.headers()["if-none-match"], "\"v1\"");
        assert_eq!(
            req.headers()["if-modified-since"],
            "Tue, 01 Dec 2026 00:00:00 GMT"
        );
        let mut plain = Request::get("/").body(()).unwrap();
        assert!(!ask_if_changed(&mut plain, &stale(&[])));
        assert!(plain.headers().is_empty());
    }

    #[test]
    fn a_304_renews_the_headers_but_not_the_length_or_the_body() {
        let entry = stale(&[
            ("etag", "\"v1\""),
            ("cache-control", "max-age=1"),
            ("content-length", "4"),
            ("age", "9"),
            ("x-kept", "old"),
        ]);
        let nm = not_modified(&[
            ("etag", "\"v1\""),
            ("cache-control", "max-age=60"),
            ("content-length", "0"),
            ("date", "Wed, 02 Dec 2026 00:00:00 GMT"),
        ]);
        let (renewed, head) = renewed(&entry, &nm).unwrap();
        assert_eq!(renewed.status(), StatusCode::OK);
        assert_eq!(renewed.body(), "body");
        let h = renewed.headers();
        assert_eq!(h["cache-control"], "max-age=60");
        assert_eq!(h["content-length"], "4");
        assert_eq!(h["x-kept"], "old");
        assert_eq!(h["date"], "Wed, 02 Dec 2026 00:00:00 GMT");
        assert!(!h.contains_key("age"));
        assert_eq!(&head.headers, h);
    }

    #[test]
    fn a_304_for_another_strong_validator_renews_nothing() {
        let entry = stale(&[("etag", "\"v1\"")]);
        assert!(renewed(&entry, &not_modified(&[("etag", "\"v2\"")])).is_none());
        assert!(renewed(&entry, &not_modified(&[("etag", "W/\"v2\"")])).is_none());
        // The same tag, compared weakly, or no tag: the stored answer.
        assert!(renewed(&entry, &not_modified(&[("etag", "W/\"v1\"")])).is_some());
        assert!(renewed(&entry, &not_modified(&[])).is_some());
        let weak = stale(&[("etag", "W/\"v1\"")]);
        assert!(renewed(&weak, &not_modified(&[("etag", "\"v1\"")])).is_none());
    }
}

//! What a response allows: may it go to the other requests of its flight, and
//! may it be stored for later ones?
//!
//! The request side of the secure defaults (methods, credentials, bodies) lives
//! in the default extractor, [`HttpKey`](crate::HttpKey); this module judges
//! responses, whatever extractor made the key. It must never let a response
//! that is private to its caller reach anyone else.

use http::{header, response, HeaderMap, HeaderName, StatusCode};

/// What may be done with a flight's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sharing {
    /// Give it to the flight's followers and store it.
    Store,
    /// Give it to the flight's followers; do not store it.
    FlightOnly,
    /// It belongs to its own caller alone: followers go to the origin themselves.
    Private,
}

/// Judges a response head.
///
/// - `Set-Cookie`, `Cache-Control: private` or `no-store`, `Vary: *` (or a
///   `Vary` that cannot be read), and `206 Partial Content`: private.
/// - `Vary` naming headers is not judged here: the flight compares those
///   headers (see [`varied_on`]).
/// - Server errors (5xx), gRPC errors (a `grpc-status` other than `0` in the
///   head, as a trailers-only answer carries it), `Cache-Control: no-cache`:
///   given to the flight's followers, who asked while it was being made (so no
///   stampede on a failing origin), but never stored.
/// - Everything else: shared and stored.
pub(crate) fn judge(head: &response::Parts) -> Sharing {
    let headers = &head.headers;
    if headers.contains_key(header::SET_COOKIE)
        || varies_on_everything(headers)
        || head.status == StatusCode::PARTIAL_CONTENT
        || cache_control_has(headers, &["private", "no-store"])
    {
        return Sharing::Private;
    }
    if head.status.is_server_error()
        || grpc_failed(headers)
        || cache_control_has(headers, &["no-cache"])
    {
        return Sharing::FlightOnly;
    }
    Sharing::Store
}

/// Judges a response's trailers, once its body has been read: a gRPC error
/// that arrives there (the usual place) is not stored either.
pub(crate) fn judge_trailers(sharing: Sharing, trailers: Option<&HeaderMap>) -> Sharing {
    match trailers {
        Some(trailers) if sharing == Sharing::Store && grpc_failed(trailers) => Sharing::FlightOnly,
        _ => sharing,
    }
}

/// A gRPC status other than OK. gRPC answers errors with HTTP 200, so the
/// status code alone would store them like successes.
fn grpc_failed(headers: &HeaderMap) -> bool {
    headers
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() != b"0")
}

/// The request headers a response says it varies on.
pub(crate) fn varied_on(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    vary_names(headers).filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
}

fn vary_names(headers: &HeaderMap) -> impl Iterator<Item = &str> + '_ {
    headers
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("*").split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
}

/// `Vary: *`, or a `Vary` this layer cannot read: nothing can be shared.
fn varies_on_everything(headers: &HeaderMap) -> bool {
    vary_names(headers).any(|name| name == "*" || HeaderName::from_bytes(name.as_bytes()).is_err())
}

/// Whether any `Cache-Control` directive is one of `names` (case-insensitive,
/// arguments such as `private="x"` included).
fn cache_control_has(headers: &HeaderMap, names: &[&str]) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.split('=').next().unwrap_or_default().trim())
        .any(|d| names.iter().any(|n| d.eq_ignore_ascii_case(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, headers: &[(&str, &str)]) -> response::Parts {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn plain_ok_is_stored() {
        assert_eq!(judge(&head(200, &[])), Sharing::Store);
        assert_eq!(
            judge(&head(404, &[("cache-control", "max-age=60")])),
            Sharing::Store
        );
    }

    #[test]
    fn personal_answers_stay_private() {
        assert_eq!(
            judge(&head(200, &[("set-cookie", "a=b")])),
            Sharing::Private
        );
        assert_eq!(
            judge(&head(200, &[("cache-control", "max-age=5, Private")])),
            Sharing::Private
        );
        assert_eq!(
            judge(&head(200, &[("cache-control", "private=\"x\"")])),
            Sharing::Private
        );
        assert_eq!(
            judge(&head(200, &[("cache-control", "no-store")])),
            Sharing::Private
        );
        assert_eq!(judge(&head(200, &[("vary", "*")])), Sharing::Private);
        assert_eq!(judge(&head(206, &[])), Sharing::Private);
    }

    #[test]
    fn grpc_errors_are_shared_with_the_flight_but_not_stored() {
        assert_eq!(judge(&head(200, &[("grpc-status", "0")])), Sharing::Store);
        assert_eq!(
            judge(&head(200, &[("grpc-status", "14")])),
            Sharing::FlightOnly
        );
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(
            judge_trailers(Sharing::Store, Some(&trailers)),
            Sharing::Store
        );
        trailers.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(
            judge_trailers(Sharing::Store, Some(&trailers)),
            Sharing::FlightOnly
        );
        assert_eq!(
            judge_trailers(Sharing::Private, Some(&trailers)),
            Sharing::Private
        );
        assert_eq!(judge_trailers(Sharing::Store, None), Sharing::Store);
    }

    #[test]
    fn server_errors_are_shared_with_the_flight_but_not_stored() {
        assert_eq!(judge(&head(503, &[])), Sharing::FlightOnly);
        assert_eq!(
            judge(&head(200, &[("cache-control", "no-cache")])),
            Sharing::FlightOnly
        );
    }
}

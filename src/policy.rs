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
    /// Pass: it belongs to its own caller alone; followers go to the origin
    /// themselves, and the key is remembered as pass-through.
    Pass,
}

/// Judges a response head.
///
/// - `Set-Cookie`, `Cache-Control: private` or `no-store`, `Vary: *`, a
///   `Cache-Control` or `Vary` that cannot be read (fail closed), and the
///   answers made for one request's own conditions — `206`, `304`, `412`,
///   `416` — which no other request asked for: private.
/// - `Vary` naming headers is not judged here: it selects the variant the
///   answer is for (see `vary`).
/// - Server errors (5xx), gRPC errors (a `grpc-status` other than `0` in the
///   head, as a trailers-only answer carries it): given to the flight's
///   followers, who asked while it was being made (so no stampede on a
///   failing origin), but never stored.
/// - `Cache-Control: no-cache`: shared, and stored for revalidation only
///   (its lifetime says so, see `origin::keep_for`).
/// - Everything else: shared and stored.
///
/// `directives` are the response's `Cache-Control`, as [`directives`] read
/// them; one that cannot be read makes the answer private before this.
/// `store_server_errors`: whether a server error with explicit freshness is
/// stored; `expires`: whether its `Expires` counts (not under a targeted
/// field).
pub(crate) fn judge(
    head: &response::Parts,
    directives: &[Directive<'_>],
    (store_server_errors, expires): (bool, bool),
) -> Sharing {
    let headers = &head.headers;
    let has = |name: &str| directives.iter().any(|d| d.is(name));
    // `must-understand` (RFC 9111 §5.2.2.3): stored only for a status whose
    // caching rules this cache implements — then in spite of a `no-store`
    // beside it, which is there for caches that do not understand it — and
    // for another status, as if `no-store`.
    let understood = crate::freshness::heuristically_cacheable(head.status);
    let must_understand = has("must-understand");
    let no_store = if must_understand {
        !understood
    } else {
        has("no-store")
    };
    if headers.contains_key(header::SET_COOKIE)
        || varies_on_everything(headers)
        || made_for_one_request(head.status)
        || has("private")
        || no_store
    {
        return Sharing::Pass;
    }
    // A server error is stored only by choice, and only with the origin's
    // explicit freshness.
    let explicit =
        || has("s-maxage") || has("max-age") || (expires && headers.contains_key(header::EXPIRES));
    let unstored_error = head.status.is_server_error() && !(store_server_errors && explicit());
    if unstored_error || grpc_failed(headers) {
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

/// Statuses that answer one request's own preconditions or range: the
/// flight's request carries none, so an origin that sends one anyway made
/// it for no one else.
fn made_for_one_request(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::PARTIAL_CONTENT
            | StatusCode::NOT_MODIFIED
            | StatusCode::PRECONDITION_FAILED
            | StatusCode::RANGE_NOT_SATISFIABLE
    )
}

/// One `Cache-Control` directive: its name and, if it has one, its argument
/// (a token, or the inside of a quoted string, escapes left as they are;
/// RFC 9111 §5.2 asks recipients to accept both forms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Directive<'a> {
    pub(crate) name: &'a str,
    pub(crate) arg: Option<&'a str>,
}

impl Directive<'_> {
    /// Whether this is the directive `name` (compared case-insensitively).
    pub(crate) fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// The directives of every `Cache-Control` field line (RFC 9111 §5.2:
/// `token [ "=" ( token / quoted-string ) ]`, comma-separated), or `Err` if
/// any line does not follow the grammar, bytes outside visible ASCII
/// included: a directive that cannot be read might have been `private`.
pub(crate) fn directives(headers: &HeaderMap) -> Result<Vec<Directive<'_>>, ()> {
    let mut found = Vec::new();
    for value in headers.get_all(header::CACHE_CONTROL) {
        let line = value.to_str().map_err(|_| ())?;
        let mut rest = line.as_bytes();
        loop {
            rest = skip(rest, |b| b == b',' || is_ows(b));
            if rest.is_empty() {
                break;
            }
            let name_len = rest.iter().take_while(|&&b| is_tchar(b)).count();
            if name_len == 0 {
                return Err(());
            }
            // The bytes are ASCII, so any split is a char boundary.
            let offset = |rest: &[u8]| line.len() - rest.len();
            let start = offset(rest);
            let name = &line[start..start + name_len];
            let mut arg = None;
            rest = skip(&rest[name_len..], is_ows);
            if let Some(after) = rest.strip_prefix(b"=") {
                rest = skip(after, is_ows);
                let arg_start = offset(rest);
                rest = match rest.strip_prefix(b"\"") {
                    Some(quoted) => {
                        let after = after_quoted(quoted)?;
                        // Inside the quotes.
                        arg = Some(&line[arg_start + 1..offset(after) - 1]);
                        after
                    }
                    None => {
                        let len = rest.iter().take_while(|&&b| is_tchar(b)).count();
                        if len == 0 {
                            return Err(());
                        }
                        arg = Some(&line[arg_start..arg_start + len]);
                        &rest[len..]
                    }
                };
                rest = skip(rest, is_ows);
            }
            found.push(Directive { name, arg });
            match rest.first() {
                None | Some(b',') => {}
                Some(_) => return Err(()),
            }
        }
    }
    Ok(found)
}

/// What follows a quoted string whose opening quote is already read.
fn after_quoted(mut rest: &[u8]) -> Result<&[u8], ()> {
    loop {
        match rest {
            [b'"', after @ ..] => return Ok(after),
            [b'\\', _, after @ ..] => rest = after,
            [_, after @ ..] => rest = after,
            [] => return Err(()),
        }
    }
}

fn skip(bytes: &[u8], what: impl Fn(u8) -> bool) -> &[u8] {
    let n = bytes.iter().take_while(|&&b| what(b)).count();
    &bytes[n..]
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The judgement of a whole head, as the origin call makes it.
    fn judge(head: &response::Parts) -> Sharing {
        match directives(&head.headers) {
            Ok(directives) => super::judge(head, &directives, (false, true)),
            Err(()) => Sharing::Pass,
        }
    }

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
        assert_eq!(judge(&head(200, &[("set-cookie", "a=b")])), Sharing::Pass);
        assert_eq!(
            judge(&head(200, &[("cache-control", "max-age=5, Private")])),
            Sharing::Pass
        );
        assert_eq!(
            judge(&head(200, &[("cache-control", "private=\"x\"")])),
            Sharing::Pass
        );
        assert_eq!(
            judge(&head(200, &[("cache-control", "no-store")])),
            Sharing::Pass
        );
        assert_eq!(judge(&head(200, &[("vary", "*")])), Sharing::Pass);
        assert_eq!(judge(&head(206, &[])), Sharing::Pass);
    }

    #[test]
    fn answers_made_for_one_requests_conditions_stay_private() {
        for status in [206, 304, 412, 416] {
            assert_eq!(judge(&head(status, &[])), Sharing::Pass, "{status}");
        }
    }

    #[test]
    fn a_cache_control_that_cannot_be_read_makes_the_answer_private() {
        let mut h = head(200, &[]);
        h.headers.insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_bytes(b"private, ext=\"caf\xe9\"").unwrap(),
        );
        assert_eq!(judge(&h), Sharing::Pass);
        for bad in ["max-age=60 private", "=5", "ext=\"open", "max-age=", "a b"] {
            assert_eq!(
                judge(&head(200, &[("cache-control", bad)])),
                Sharing::Pass,
                "{bad}"
            );
        }
        // Well-formed, with quoted commas and escapes: judged by its names.
        for good in [
            "max-age=60, ext=\"a, private\"",
            "public,,max-age=5",
            "ext=\"q\\\"x\", max-age=1",
            "max-age=abc",
        ] {
            assert_eq!(
                judge(&head(200, &[("cache-control", good)])),
                Sharing::Store,
                "{good}"
            );
        }
        // A bad freshness argument is not a sharing question.
        assert_eq!(
            judge(&head(200, &[("cache-control", "max-age=-1")])),
            Sharing::Store
        );
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
            judge_trailers(Sharing::Pass, Some(&trailers)),
            Sharing::Pass
        );
        assert_eq!(judge_trailers(Sharing::Store, None), Sharing::Store);
    }

    #[test]
    fn must_understand_stores_only_the_statuses_this_cache_understands() {
        let cc = |v: &'static str| [("cache-control", v)];
        assert_eq!(
            judge(&head(200, &cc("max-age=60, must-understand, no-store"))),
            Sharing::Store,
            "understood: the no-store beside it is for other caches"
        );
        assert_eq!(
            judge(&head(404, &cc("max-age=60, must-understand"))),
            Sharing::Store
        );
        assert_eq!(
            judge(&head(302, &cc("max-age=60, must-understand"))),
            Sharing::Pass,
            "not understood: as if no-store"
        );
        assert_eq!(
            judge(&head(200, &cc("max-age=60, no-store"))),
            Sharing::Pass
        );
    }

    #[test]
    fn server_errors_are_shared_with_the_flight_but_not_stored() {
        assert_eq!(judge(&head(503, &[])), Sharing::FlightOnly);
        // No-cache answers are stored, to be revalidated at every use (their
        // lifetime says so).
        assert_eq!(
            judge(&head(200, &[("cache-control", "no-cache")])),
            Sharing::Store
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Any bytes a header may hold: judged, never a panic; and what
        /// cannot be read as `Cache-Control` is never stored.
        #[test]
        fn any_cache_control_is_judged(bytes in proptest::collection::vec(
            proptest::prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..40)
        ) {
            let mut h = head(200, &[]);
            h.headers.insert(header::CACHE_CONTROL, http::HeaderValue::from_bytes(&bytes).unwrap());
            let sharing = judge(&h);
            if directives(&h.headers).is_err() {
                proptest::prop_assert_eq!(sharing, Sharing::Pass);
            }
        }
    }
}

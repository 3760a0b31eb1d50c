//! What each caller gets from a shared representation: its own
//! preconditions (RFC 9110 §13) and range (§14) evaluated against it, and no
//! body for a `HEAD`.
//!
//! A flight is for a representation, never for one caller's validators or
//! range: the leader's request goes to the origin without its `If-*` and
//! `Range` headers (as nginx and Varnish fill a cache), and every caller —
//! leader, follower, hit — then gets `200`, `304`, `412`, `206` or `416`
//! computed here for its own request. This module must never let one
//! caller's conditions shape another caller's answer.

use crate::{CoalesceBody, Entry};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{response, Method, Request, Response, StatusCode};
use std::time::{Duration, SystemTime};

/// The request headers that make a request conditional on the
/// representation it gets, and are left out of a flight's origin request.
const CONDITIONAL: [HeaderName; 6] = [
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::RANGE,
    header::IF_RANGE,
];

/// The response headers a `304` keeps (RFC 9110 §15.4.5: those a `200`
/// would have carried among `Cache-Control`, `Content-Location`, `Date`,
/// `ETag`, `Expires` and `Vary`; `Last-Modified`, which guides cache
/// updates; `Age`; and `Set-Cookie`, which only a private answer has).
const NOT_MODIFIED_KEEPS: [HeaderName; 9] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
    header::LAST_MODIFIED,
    header::AGE,
    header::SET_COOKIE,
];

/// One caller's request, as far as its answer depends on more than the
/// shared representation. Small on purpose: a plain `GET` holds no map.
#[derive(Debug, Clone, Default)]
pub(crate) struct Asked {
    method: Asking,
    /// The caller's conditional headers, if it sent any.
    conditions: Option<Box<HeaderMap>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Asking {
    #[default]
    Get,
    Head,
    Other,
}

/// What a caller's preconditions make of a `2xx` representation.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Answer normally (ranges still apply).
    Proceed,
    NotModified,
    PreconditionFailed,
}

/// What a caller's `Range` makes of a `200` representation of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// No range, or one to ignore: the whole representation.
    Whole,
    /// Bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// `416`.
    Unsatisfiable,
}

impl Asked {
    /// What `req` asked, its headers untouched (followers and hits).
    pub(crate) fn of<B>(req: &Request<B>) -> Self {
        let headers = req.headers();
        let conditions = has_any(headers, &CONDITIONAL).then(|| {
            let mut kept = HeaderMap::new();
            for name in &CONDITIONAL {
                for value in headers.get_all(name) {
                    kept.append(name.clone(), value.clone());
                }
            }
            Box::new(kept)
        });
        Self {
            method: Asking::of(req.method()),
            conditions,
        }
    }

    /// What `req` asked, and `req` made into the flight's origin request:
    /// its conditional headers taken out, and a `HEAD` asked as a `GET`, so
    /// that the answer is the whole representation every caller can share.
    pub(crate) fn take<B>(req: &mut Request<B>) -> Self {
        let asked = Self::of(req);
        if asked.conditions.is_some() {
            let headers = req.headers_mut();
            for name in &CONDITIONAL {
                headers.remove(name);
            }
        }
        if asked.method == Asking::Head {
            *req.method_mut() = Method::GET;
        }
        asked
    }

    /// Undoes [`take`](Self::take): the request as its caller sent it, for
    /// a call made for this caller alone.
    pub(crate) fn restore<B>(&self, req: &mut Request<B>) {
        if self.method == Asking::Head {
            *req.method_mut() = Method::HEAD;
        }
        if let Some(conditions) = &self.conditions {
            for (name, value) in conditions.iter() {
                req.headers_mut().append(name.clone(), value.clone());
            }
        }
    }

    /// This caller's answer from a shared entry.
    pub(crate) fn answer<B>(&self, entry: &Entry) -> Response<CoalesceBody<B>> {
        let mut res = entry.to_response();
        if let Some(conditions) = &self.conditions {
            match self.verdict(conditions, entry.status(), entry.headers()) {
                Verdict::Proceed => {}
                Verdict::NotModified => return not_modified(res),
                Verdict::PreconditionFailed => return precondition_failed(),
            }
            if entry.status() == StatusCode::OK && self.method == Asking::Get {
                let len = entry.body().len() as u64;
                match ranged(conditions, entry.headers(), len) {
                    Ranged::Whole => {}
                    Ranged::Unsatisfiable => return unsatisfiable(len),
                    Ranged::Part { start, end } => {
                        // Both within the body's length, a `usize`.
                        let part = entry.body().slice(start as usize..=end as usize);
                        partial(res.headers_mut(), start, end, len);
                        *res.status_mut() = StatusCode::PARTIAL_CONTENT;
                        *res.body_mut() = CoalesceBody::full(part, None);
                        return res;
                    }
                }
            }
        }
        if self.method == Asking::Head {
            without_body(&mut res, entry.body().len());
        }
        res
    }

    /// This caller's answer from a response that is not shared (private, or
    /// too large to buffer): preconditions and a single range applied to
    /// its head and streamed body, as the origin would have applied them.
    pub(crate) fn answer_streamed<B>(
        &self,
        head: response::Parts,
        body: CoalesceBody<B>,
    ) -> Response<CoalesceBody<B>> {
        let mut res = Response::from_parts(head, body);
        let Some(conditions) = &self.conditions else {
            if self.method == Asking::Head {
                *res.body_mut() = CoalesceBody::empty();
            }
            return res;
        };
        match self.verdict(conditions, res.status(), res.headers()) {
            Verdict::Proceed => {}
            Verdict::NotModified => return not_modified(res),
            Verdict::PreconditionFailed => return precondition_failed(),
        }
        if self.method == Asking::Head {
            *res.body_mut() = CoalesceBody::empty();
            return res;
        }
        // A range needs the whole length, which only `Content-Length` gives
        // before the body is read.
        let len = content_length(res.headers());
        if let (StatusCode::OK, Some(len), Asking::Get) = (res.status(), len, self.method) {
            match ranged(conditions, res.headers(), len) {
                Ranged::Whole => {}
                Ranged::Unsatisfiable => return unsatisfiable(len),
                Ranged::Part { start, end } => {
                    let (mut head, body) = res.into_parts();
                    partial(&mut head.headers, start, end, len);
                    head.status = StatusCode::PARTIAL_CONTENT;
                    let body = CoalesceBody::range(body, start, end - start + 1);
                    return Response::from_parts(head, body);
                }
            }
        }
        res
    }

    /// RFC 9110 §13.2.2, steps 1 to 4, for a representation with `status`
    /// and `headers`. Preconditions are ignored unless the unconditional
    /// answer is `2xx` or `412` (§13.2.1): a shared `404` or `5xx` stays as
    /// it is.
    fn verdict(&self, conditions: &HeaderMap, status: StatusCode, headers: &HeaderMap) -> Verdict {
        if !(status.is_success() || status == StatusCode::PRECONDITION_FAILED) {
            return Verdict::Proceed;
        }
        let etag = headers
            .get(header::ETAG)
            .and_then(|v| EntityTag::parse(v.as_bytes()));
        let modified = date(headers.get(header::LAST_MODIFIED));
        // 1. If-Match, strong comparison; 2. else If-Unmodified-Since.
        if conditions.contains_key(header::IF_MATCH) {
            if !list_matches(conditions.get_all(header::IF_MATCH), etag.as_ref(), true) {
                return Verdict::PreconditionFailed;
            }
        } else if let (Some(since), Some(modified)) =
            (date(conditions.get(header::IF_UNMODIFIED_SINCE)), modified)
        {
            if modified > since {
                return Verdict::PreconditionFailed;
            }
        }
        // 3. If-None-Match, weak comparison; 4. else If-Modified-Since,
        // for GET and HEAD only.
        let read = self.method != Asking::Other;
        if conditions.contains_key(header::IF_NONE_MATCH) {
            if list_matches(
                conditions.get_all(header::IF_NONE_MATCH),
                etag.as_ref(),
                false,
            ) {
                return if read {
                    Verdict::NotModified
                } else {
                    Verdict::PreconditionFailed
                };
            }
        } else if read {
            if let (Some(since), Some(modified)) =
                (date(conditions.get(header::IF_MODIFIED_SINCE)), modified)
            {
                if modified <= since {
                    return Verdict::NotModified;
                }
            }
        }
        Verdict::Proceed
    }
}

/// Whether `headers` has any of `names`. Asked of every keyed request, hits
/// included: a request has few headers, so one pass over them is cheaper
/// than a hashed lookup per name.
pub(crate) fn has_any(headers: &HeaderMap, names: &[HeaderName]) -> bool {
    if headers.keys_len() <= 16 {
        headers.keys().any(|name| names.contains(name))
    } else {
        names.iter().any(|name| headers.contains_key(name))
    }
}

impl Asking {
    fn of(method: &Method) -> Self {
        match *method {
            Method::GET => Asking::Get,
            Method::HEAD => Asking::Head,
            _ => Asking::Other,
        }
    }
}

/// RFC 9110 §13.2.2 step 5 and §14: the caller's single byte range of a
/// `200` representation of `len` bytes, if its `If-Range` (if any) holds.
/// Anything this layer does not serve as a range — another unit, several
/// ranges, bad syntax — is the whole representation, which a server may
/// always answer instead (§14.2).
fn ranged(conditions: &HeaderMap, headers: &HeaderMap, len: u64) -> Ranged {
    let Some(range) = conditions.get(header::RANGE) else {
        return Ranged::Whole;
    };
    if conditions.get_all(header::RANGE).iter().count() > 1 {
        return Ranged::Whole;
    }
    if let Some(if_range) = conditions.get(header::IF_RANGE) {
        if !if_range_holds(if_range, headers) {
            return Ranged::Whole;
        }
    }
    parse_range(range.as_bytes(), len)
}

/// §13.1.5: an entity tag matches by strong comparison; a date matches a
/// strong `Last-Modified` (one at least a second before the answer's
/// `Date`, §8.8.2.2) exactly.
fn if_range_holds(if_range: &HeaderValue, headers: &HeaderMap) -> bool {
    let value = if_range.as_bytes();
    if value.starts_with(b"\"") || value.starts_with(b"W/") {
        let current = headers
            .get(header::ETAG)
            .and_then(|v| EntityTag::parse(v.as_bytes()));
        return match (EntityTag::parse(value), current) {
            (Some(asked), Some(current)) => asked.strong_eq(&current),
            _ => false,
        };
    }
    let (Some(asked), Some(modified)) = (
        date(Some(if_range)),
        date(headers.get(header::LAST_MODIFIED)),
    ) else {
        return false;
    };
    let strong =
        date(headers.get(header::DATE)).is_some_and(|at| at >= modified + Duration::from_secs(1));
    strong && asked == modified
}

/// A `Range` value of one byte range, against a representation of `len`.
fn parse_range(value: &[u8], len: u64) -> Ranged {
    let Ok(value) = std::str::from_utf8(value) else {
        return Ranged::Whole;
    };
    let Some((unit, set)) = value.split_once('=') else {
        return Ranged::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Ranged::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // More digits than fit are a number past any length.
        Some(s.parse().unwrap_or(u64::MAX))
    };
    if first.is_empty() {
        // A suffix: the last `n` bytes.
        let Some(n) = number(last) else {
            return Ranged::Whole;
        };
        if n == 0 || len == 0 {
            return Ranged::Unsatisfiable;
        }
        return Ranged::Part {
            start: len - n.min(len),
            end: len - 1,
        };
    }
    let Some(start) = number(first) else {
        return Ranged::Whole;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match number(last) {
            Some(end) if end >= start => end,
            // `last < first` is invalid syntax: ignored.
            _ => return Ranged::Whole,
        }
    };
    if start >= len {
        return Ranged::Unsatisfiable;
    }
    Ranged::Part {
        start,
        end: end.min(len - 1),
    }
}

/// An entity tag (RFC 9110 §8.8.3): weak or not, and its opaque part.
#[derive(Debug, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    opaque: &'a [u8],
}

impl<'a> EntityTag<'a> {
    /// One whole entity tag, nothing around it but whitespace.
    fn parse(value: &'a [u8]) -> Option<Self> {
        let (tag, rest) = Self::next(value.trim_ascii())?;
        rest.is_empty().then_some(tag)
    }

    /// The entity tag at the start of `value`, and what follows it.
    fn next(value: &'a [u8]) -> Option<(Self, &'a [u8])> {
        let (weak, value) = match value.strip_prefix(b"W/") {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let inner = value.strip_prefix(b"\"")?;
        let close = inner.iter().position(|&b| b == b'"')?;
        let opaque = &inner[..close];
        // etagc: %x21 / %x23-7E / obs-text.
        if !opaque.iter().all(|&b| b == 0x21 || b >= 0x23 && b != 0x7f) {
            return None;
        }
        Some((EntityTag { weak, opaque }, &inner[close + 1..]))
    }

    fn strong_eq(&self, other: &EntityTag<'_>) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    fn weak_eq(&self, other: &EntityTag<'_>) -> bool {
        self.opaque == other.opaque
    }
}

/// Whether an `If-Match` / `If-None-Match` list matches the current entity
/// tag: `*` matches any current representation; a list that cannot be
/// read matches nothing (so it never earns a `304`).
fn list_matches<'a>(
    values: http::header::GetAll<'a, HeaderValue>,
    current: Option<&EntityTag<'_>>,
    strong: bool,
) -> bool {
    for value in values {
        let mut rest = value.as_bytes().trim_ascii();
        if rest == b"*" {
            return true;
        }
        let Some(current) = current else {
            continue;
        };
        loop {
            rest = rest.trim_ascii_start();
            while let Some(after) = rest.strip_prefix(b",") {
                rest = after.trim_ascii_start();
            }
            if rest.is_empty() {
                break;
            }
            let Some((tag, after)) = EntityTag::next(rest) else {
                break;
            };
            let equal = if strong {
                tag.strong_eq(current)
            } else {
                tag.weak_eq(current)
            };
            if equal {
                return true;
            }
            rest = after;
        }
    }
    false
}

/// An HTTP-date; an invalid one is none (its condition is then ignored).
fn date(value: Option<&HeaderValue>) -> Option<SystemTime> {
    httpdate::parse_http_date(value?.to_str().ok()?.trim()).ok()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A `304` made from a `200`'s response: the headers §15.4.5 lists, no body.
fn not_modified<B>(res: Response<CoalesceBody<B>>) -> Response<CoalesceBody<B>> {
    let (mut head, _) = res.into_parts();
    let mut headers = HeaderMap::new();
    for name in &NOT_MODIFIED_KEEPS {
        for value in head.headers.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    head.headers = headers;
    head.status = StatusCode::NOT_MODIFIED;
    Response::from_parts(head, CoalesceBody::empty())
}

fn precondition_failed<B>() -> Response<CoalesceBody<B>> {
    empty(StatusCode::PRECONDITION_FAILED)
}

/// A `416`, with the representation's length (§15.5.17).
fn unsatisfiable<B>(len: u64) -> Response<CoalesceBody<B>> {
    let mut res = empty(StatusCode::RANGE_NOT_SATISFIABLE);
    if let Ok(value) = HeaderValue::try_from(format!("bytes */{len}")) {
        res.headers_mut().insert(header::CONTENT_RANGE, value);
    }
    res
}

fn empty<B>(status: StatusCode) -> Response<CoalesceBody<B>> {
    let mut res = Response::new(CoalesceBody::empty());
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    res
}

/// The headers of a `206` of bytes `start..=end` of `len`.
fn partial(headers: &mut HeaderMap, start: u64, end: u64, len: u64) {
    if let Ok(range) = HeaderValue::try_from(format!("bytes {start}-{end}/{len}")) {
        headers.insert(header::CONTENT_RANGE, range);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
}

/// A `HEAD`'s answer: the `GET`'s headers, with the length the body would
/// have had, and no body.
fn without_body<B>(res: &mut Response<CoalesceBody<B>>, len: usize) {
    *res.body_mut() = CoalesceBody::empty();
    let bodiless = res.status().is_informational()
        || res.status() == StatusCode::NO_CONTENT
        || res.status() == StatusCode::NOT_MODIFIED;
    if !bodiless && !res.headers().contains_key(header::CONTENT_LENGTH) {
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}

/// An empty body, for `Bytes`-typed tests.
#[cfg(test)]
type Body = http_body_util::Full<bytes::Bytes>;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;

    const LM: &str = "Tue, 01 Dec 2026 10:00:00 GMT";
    const BEFORE: &str = "Tue, 01 Dec 2026 09:00:00 GMT";
    const AFTER: &str = "Tue, 01 Dec 2026 11:00:00 GMT";

    fn entry(status: u16, headers: &[(&str, &str)], body: &'static str) -> Entry {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Entry::new(
            StatusCode::from_u16(status).unwrap(),
            http::Version::HTTP_11,
            map,
            Bytes::from_static(body.as_bytes()),
            None,
        )
    }

    fn page() -> Entry {
        entry(
            200,
            &[
                ("etag", "\"v1\""),
                ("last-modified", LM),
                ("date", AFTER),
                ("content-type", "text/plain"),
                ("cache-control", "max-age=60"),
                ("x-other", "1"),
            ],
            "0123456789",
        )
    }

    fn asked(method: &str, headers: &[(&str, &str)]) -> Asked {
        let mut req = Request::builder().method(method).uri("/");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Asked::of(&req.body(()).unwrap())
    }

    async fn answer(asked: &Asked, entry: &Entry) -> (StatusCode, HeaderMap, Bytes) {
        let res = asked.answer::<Body>(entry);
        let (head, body) = res.into_parts();
        (
            head.status,
            head.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    #[tokio::test]
    async fn a_matching_if_none_match_gets_a_304_with_the_listed_headers() {
        let (status, headers, body) =
            answer(&asked("GET", &[("if-none-match", "W/\"v1\"")]), &page()).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());
        assert_eq!(headers["etag"], "\"v1\"");
        assert_eq!(headers["cache-control"], "max-age=60");
        assert_eq!(headers["last-modified"], LM);
        assert!(!headers.contains_key("content-type"));
        assert!(!headers.contains_key("x-other"));
        // A list, with `*`, and one that misses.
        let list = asked("GET", &[("if-none-match", "\"a\", \"v1\"")]);
        assert_eq!(answer(&list, &page()).await.0, StatusCode::NOT_MODIFIED);
        let any = asked("HEAD", &[("if-none-match", "*")]);
        assert_eq!(answer(&any, &page()).await.0, StatusCode::NOT_MODIFIED);
        let miss = asked("GET", &[("if-none-match", "\"v2\"")]);
        assert_eq!(
            answer(&miss, &page()).await,
            (
                StatusCode::OK,
                page().headers().clone(),
                Bytes::from("0123456789")
            )
        );
    }

    #[tokio::test]
    async fn if_modified_since_is_ignored_beside_if_none_match_or_when_invalid() {
        let ims = |v: &str| asked("GET", &[("if-modified-since", v)]);
        assert_eq!(answer(&ims(LM), &page()).await.0, StatusCode::NOT_MODIFIED);
        assert_eq!(
            answer(&ims(AFTER), &page()).await.0,
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(answer(&ims(BEFORE), &page()).await.0, StatusCode::OK);
        assert_eq!(answer(&ims("yesterday"), &page()).await.0, StatusCode::OK);
        let both = asked(
            "GET",
            &[("if-none-match", "\"other\""), ("if-modified-since", AFTER)],
        );
        assert_eq!(answer(&both, &page()).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn if_match_compares_strongly_and_comes_first() {
        let im = |v: &str| asked("GET", &[("if-match", v)]);
        assert_eq!(answer(&im("\"v1\""), &page()).await.0, StatusCode::OK);
        assert_eq!(answer(&im("*"), &page()).await.0, StatusCode::OK);
        assert_eq!(
            answer(&im("W/\"v1\""), &page()).await.0,
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            answer(&im("\"v2\""), &page()).await.0,
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            answer(&im("garbage"), &page()).await.0,
            StatusCode::PRECONDITION_FAILED
        );
        // If-Match wins over If-None-Match's 304.
        let both = asked(
            "GET",
            &[("if-match", "\"v2\""), ("if-none-match", "\"v1\"")],
        );
        assert_eq!(
            answer(&both, &page()).await.0,
            StatusCode::PRECONDITION_FAILED
        );
        // If-Unmodified-Since, only without If-Match.
        let ius = |v: &str| asked("GET", &[("if-unmodified-since", v)]);
        assert_eq!(
            answer(&ius(BEFORE), &page()).await.0,
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(answer(&ius(LM), &page()).await.0, StatusCode::OK);
        let over = asked(
            "GET",
            &[("if-match", "\"v1\""), ("if-unmodified-since", BEFORE)],
        );
        assert_eq!(answer(&over, &page()).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn preconditions_leave_errors_as_they_are() {
        let missing = entry(404, &[("etag", "\"v1\"")], "gone");
        let a = asked(
            "GET",
            &[("if-none-match", "\"v1\""), ("range", "bytes=0-1")],
        );
        assert_eq!(answer(&a, &missing).await.0, StatusCode::NOT_FOUND);
        assert_eq!(answer(&a, &missing).await.2, "gone");
        let failing = entry(503, &[], "down");
        assert_eq!(
            answer(&asked("GET", &[("if-match", "\"x\"")]), &failing)
                .await
                .0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn a_single_range_gets_its_bytes() {
        let r = |v: &str| asked("GET", &[("range", v)]);
        let (status, headers, body) = answer(&r("bytes=2-4"), &page()).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::PARTIAL_CONTENT, &b"234"[..])
        );
        assert_eq!(headers["content-range"], "bytes 2-4/10");
        assert_eq!(headers["content-length"], "3");
        assert_eq!(headers["etag"], "\"v1\"");
        assert_eq!(answer(&r("bytes=7-"), &page()).await.2, "789");
        assert_eq!(answer(&r("bytes=-3"), &page()).await.2, "789");
        assert_eq!(answer(&r("bytes=-30"), &page()).await.2, "0123456789");
        assert_eq!(
            answer(&r("bytes=8-99999999999999999999999"), &page())
                .await
                .2,
            "89"
        );
        assert_eq!(answer(&r("Bytes = 0-0"), &page()).await.2, "0");
    }

    #[tokio::test]
    async fn an_unsatisfiable_range_gets_a_416_with_the_length() {
        for v in ["bytes=999-", "bytes=10-12", "bytes=-0"] {
            let (status, headers, body) = answer(&asked("GET", &[("range", v)]), &page()).await;
            assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE, "{v}");
            assert_eq!(headers["content-range"], "bytes */10");
            assert!(body.is_empty());
        }
    }

    #[tokio::test]
    async fn ranges_this_layer_does_not_serve_get_the_whole_answer() {
        for v in [
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=5-2",
            "bytes=x-",
            "bytes",
        ] {
            let (status, _, body) = answer(&asked("GET", &[("range", v)]), &page()).await;
            assert_eq!(
                (status, &body[..]),
                (StatusCode::OK, &b"0123456789"[..]),
                "{v}"
            );
        }
        // Range is for GET only, and for 200 answers only.
        let head = asked("HEAD", &[("range", "bytes=0-1")]);
        assert_eq!(answer(&head, &page()).await.0, StatusCode::OK);
        let created = entry(201, &[], "abc");
        assert_eq!(
            answer(&asked("GET", &[("range", "bytes=0-1")]), &created)
                .await
                .2,
            "abc"
        );
    }

    #[tokio::test]
    async fn if_range_needs_a_strong_match() {
        let ir = |v: &str| asked("GET", &[("range", "bytes=0-1"), ("if-range", v)]);
        assert_eq!(
            answer(&ir("\"v1\""), &page()).await.0,
            StatusCode::PARTIAL_CONTENT
        );
        assert_eq!(answer(&ir("W/\"v1\""), &page()).await.0, StatusCode::OK);
        assert_eq!(answer(&ir("\"v0\""), &page()).await.0, StatusCode::OK);
        assert_eq!(
            answer(&ir(LM), &page()).await.0,
            StatusCode::PARTIAL_CONTENT
        );
        assert_eq!(answer(&ir(BEFORE), &page()).await.0, StatusCode::OK);
        // A Last-Modified as late as the Date is weak: no range by date.
        let weak = entry(200, &[("last-modified", LM), ("date", LM)], "0123456789");
        assert_eq!(answer(&ir(LM), &weak).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_head_gets_the_headers_and_length_but_no_body() {
        let plain = entry(200, &[], "0123456789");
        let (status, headers, body) = answer(&asked("HEAD", &[]), &plain).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_empty());
        assert_eq!(headers["content-length"], "10");
    }

    #[tokio::test]
    async fn a_streamed_answer_gets_the_same_treatment() {
        let head = |len: Option<&str>| {
            let mut b = Response::builder().header("etag", "\"v1\"");
            if let Some(len) = len {
                b = b.header("content-length", len);
            }
            b.body(()).unwrap().into_parts().0
        };
        let body = || CoalesceBody::<Body>::inner(Body::new(Bytes::from_static(b"0123456789")));
        let range = asked("GET", &[("range", "bytes=3-5")]);
        let res = range.answer_streamed(head(Some("10")), body());
        assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(res.headers()["content-range"], "bytes 3-5/10");
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "345");
        // Without a length, the whole body.
        let res = range.answer_streamed(head(None), body());
        assert_eq!(res.status(), StatusCode::OK);
        let inm = asked("GET", &[("if-none-match", "\"v1\"")]);
        assert_eq!(
            inm.answer_streamed(head(Some("10")), body()).status(),
            StatusCode::NOT_MODIFIED
        );
        let res = asked("HEAD", &[]).answer_streamed(head(Some("10")), body());
        assert!(res
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty());
    }

    #[test]
    fn taking_strips_the_conditions_and_asks_get_and_restoring_undoes_it() {
        let mut req = Request::head("/")
            .header("if-none-match", "\"a\"")
            .header("range", "bytes=0-1")
            .header("accept", "x")
            .body(())
            .unwrap();
        let asked = Asked::take(&mut req);
        assert_eq!(req.method(), Method::GET);
        assert!(!req.headers().contains_key("if-none-match"));
        assert!(!req.headers().contains_key("range"));
        assert_eq!(req.headers()["accept"], "x");
        asked.restore(&mut req);
        assert_eq!(req.method(), Method::HEAD);
        assert_eq!(req.headers()["if-none-match"], "\"a\"");
        assert_eq!(req.headers()["range"], "bytes=0-1");
    }

    #[test]
    fn entity_tags_parse_as_the_grammar_says() {
        assert_eq!(
            EntityTag::parse(b"\"a,b\""),
            Some(EntityTag {
                weak: false,
                opaque: b"a,b"
            })
        );
        assert_eq!(
            EntityTag::parse(b"W/\"\""),
            Some(EntityTag {
                weak: true,
                opaque: b""
            })
        );
        assert_eq!(EntityTag::parse(b"a"), None);
        assert_eq!(EntityTag::parse(b"\"a\" x"), None);
        assert_eq!(EntityTag::parse(b"\"a"), None);
    }
}

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
mod range;
#[cfg(test)]
mod tests;
mod validators;

use self::range::{ranged, Ranged};
use self::validators::{date, list_matches, EntityTag};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{response, Method, Request, Response, StatusCode};

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

    /// This caller's answer from a flight's answer whose body is arriving:
    /// read from its tape, with this caller's conditions, range and method
    /// applied to its head. `None` if the tape no longer starts at the
    /// first byte (the caller must start a new flight).
    pub(crate) fn answer_tape<B>(
        &self,
        streamed: &crate::flight::Streamed,
    ) -> Option<Response<CoalesceBody<B>>> {
        let reader = streamed.tape.reader()?;
        let (head, _) = streamed.head.to_response::<B>().into_parts();
        Some(self.answer_streamed(head, CoalesceBody::tape(reader)))
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

/// Whether `value` is one strong entity tag (RFC 9110 §8.8.3): what a
/// `Range` request may be made conditional on with `If-Range` (§13.1.5).
pub(crate) fn is_strong_tag(value: &http::HeaderValue) -> bool {
    EntityTag::parse(value.as_bytes()).is_some_and(|tag| !tag.weak)
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
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

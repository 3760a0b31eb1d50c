//! Taking over another process's answer when that process stopped in the
//! middle of its body: the waiting process asks the origin for the rest
//! with a `Range` request from the byte it has (RFC 9110 §14.2), made
//! conditional on the answer's strong entity tag with `If-Range` (§13.1.5),
//! and splices the rest onto its tape — so its callers' bodies go on
//! instead of failing.
//!
//! Only an answer that says which representation it is can be resumed: a
//! `200` with a strong `ETag`. The rest counts only if it is of that same
//! representation: a `206` with the same tag whose `Content-Range` starts
//! at the byte asked for (and whose length, if given, is the answer's), or
//! a `200` with the same tag (a server may ignore `Range`), whose first
//! bytes are skipped. Anything else fails the callers' bodies, as before:
//! bytes of two representations are never joined.

use crate::origin::{Origin, OriginBody};
use crate::BoxError;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{CONTENT_RANGE, ETAG, IF_RANGE, RANGE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;

/// The origin's answer to a resuming request, its body boxed.
pub(crate) type Resumed = Response<UnsyncBoxBody<Bytes, BoxError>>;

/// How a waiting process asks the origin for the rest of an answer: the
/// flight's own request and service, kept for that, sent once with the
/// headers given.
pub(crate) struct Resume(
    Box<dyn FnOnce(HeaderMap) -> BoxFuture<'static, Result<Resumed, String>> + Send>,
);

impl Resume {
    /// Sends `req` (the flight's request: no conditions, no range of a
    /// caller's) through `inner` when called.
    pub(crate) fn new<S, ReqBody, B>(req: Request<ReqBody>, inner: S) -> Self
    where
        S: Origin<ReqBody, B>,
        ReqBody: Send + 'static,
        B: OriginBody,
    {
        Self(Box::new(move |headers: HeaderMap| {
            let (mut req, mut inner) = (req, inner);
            req.headers_mut().extend(headers);
            Box::pin(async move {
                std::future::poll_fn(|cx| inner.poll_ready(cx))
                    .await
                    .map_err(|e| e.to_string())?;
                let res = inner.call(req).await.map_err(|e| e.to_string())?;
                Ok(res.map(|body| UnsyncBoxBody::new(body.map_err(Into::into))))
            })
        }))
    }

    /// Asks for the answer from byte `from` on, only if it is still the
    /// representation `tag` names.
    pub(crate) async fn send(self, from: u64, tag: &HeaderValue) -> Result<Resumed, String> {
        let mut headers = HeaderMap::new();
        let range =
            HeaderValue::try_from(format!("bytes={from}-")).expect("digits make a header value");
        headers.insert(RANGE, range);
        headers.insert(IF_RANGE, tag.clone());
        (self.0)(headers).await
    }
}

/// The strong entity tag that a `Range` request for the rest of an answer
/// with this status and these headers can be made conditional on, if any.
pub(crate) fn strong_tag(status: StatusCode, headers: &HeaderMap) -> Option<&HeaderValue> {
    let tag = headers.get(ETAG)?;
    (status == StatusCode::OK && crate::conditions::is_strong_tag(tag)).then_some(tag)
}

/// How many of the resumed answer's first bytes are already on the tape
/// (to skip), if it is the rest of the same representation from `from`;
/// why not otherwise. `declared`: the answer's length, if it said.
pub(crate) fn skip(
    res: &Resumed,
    tag: &HeaderValue,
    from: u64,
    declared: Option<u64>,
) -> Result<u64, String> {
    let status = res.status();
    // Strong comparison (RFC 9110 §8.8.3.2): the same opaque tag, neither weak.
    if res.headers().get(ETAG) != Some(tag) {
        return Err(format!(
            "the origin answered the range request with {status} of another representation"
        ));
    }
    match status {
        StatusCode::OK => Ok(from),
        StatusCode::PARTIAL_CONTENT => match content_range(res.headers()) {
            Some((first, length))
                if first == from
                    && (declared.is_none() || length.is_none() || length == declared) =>
            {
                Ok(0)
            }
            _ => Err(format!(
                "the origin's range does not start at byte {from} of the answer"
            )),
        },
        status => Err(format!(
            "the origin answered the range request with {status}"
        )),
    }
}

/// A `Content-Range` of bytes (RFC 9110 §14.4): its first position, and
/// the complete length if known.
fn content_range(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let value = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    let range = value.strip_prefix("bytes ")?;
    let (span, length) = range.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
    if last < first {
        return None;
    }
    let length = match length {
        "*" => None,
        n => Some(n.parse::<u64>().ok().filter(|n| *n > last)?),
    };
    Some((first, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resumed(status: u16, headers: &[(&'static str, &'static str)]) -> Resumed {
        let mut res = Response::builder().status(status);
        for (name, value) in headers {
            res = res.header(*name, *value);
        }
        res.body(UnsyncBoxBody::new(
            http_body_util::Empty::new().map_err(|never| match never {}),
        ))
        .unwrap()
    }

    #[test]
    fn only_a_200_with_a_strong_tag_may_be_resumed() {
        let with = |tag: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(ETAG, HeaderValue::from_static(tag));
            headers
        };
        assert!(strong_tag(StatusCode::OK, &with("\"v1\"")).is_some());
        assert!(strong_tag(StatusCode::OK, &with("W/\"v1\"")).is_none());
        assert!(strong_tag(StatusCode::OK, &with("v1")).is_none());
        assert!(strong_tag(StatusCode::OK, &with("\"v\"1\"")).is_none());
        assert!(strong_tag(StatusCode::NOT_FOUND, &with("\"v1\"")).is_none());
        assert!(strong_tag(StatusCode::OK, &HeaderMap::new()).is_none());
    }

    #[test]
    fn the_rest_counts_only_if_it_is_the_same_representation_from_the_byte_asked() {
        let tag = HeaderValue::from_static("\"v1\"");
        let rest =
            |range: &'static str| resumed(206, &[("etag", "\"v1\""), ("content-range", range)]);
        assert_eq!(
            skip(&rest("bytes 100-999/1000"), &tag, 100, Some(1000)),
            Ok(0)
        );
        assert_eq!(skip(&rest("bytes 100-999/*"), &tag, 100, Some(1000)), Ok(0));
        assert_eq!(skip(&rest("bytes 100-999/1000"), &tag, 100, None), Ok(0));
        assert!(skip(&rest("bytes 0-999/1000"), &tag, 100, Some(1000)).is_err());
        assert!(skip(&rest("bytes 100-1999/2000"), &tag, 100, Some(1000)).is_err());
        assert!(skip(&rest("bytes 100-99/1000"), &tag, 100, Some(1000)).is_err());
        assert!(skip(&rest("items 100-999/1000"), &tag, 100, Some(1000)).is_err());
        // The whole answer again, as a server ignoring `Range` sends it.
        assert_eq!(
            skip(&resumed(200, &[("etag", "\"v1\"")]), &tag, 100, None),
            Ok(100)
        );
        // Another representation, or none said.
        assert!(skip(&resumed(200, &[("etag", "\"v2\"")]), &tag, 100, None).is_err());
        assert!(skip(&resumed(200, &[]), &tag, 100, None).is_err());
        assert!(skip(
            &resumed(
                206,
                &[
                    ("etag", "W/\"v1\""),
                    ("content-range", "bytes 100-999/1000")
                ]
            ),
            &tag,
            100,
            None
        )
        .is_err());
        assert!(skip(&resumed(412, &[("etag", "\"v1\"")]), &tag, 100, None).is_err());
    }
}

//! The answers the proxy makes itself when the upstream gives none, and
//! how it tells why.

use super::UpstreamBody;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

pub(super) fn bad_gateway() -> Response<UpstreamBody> {
    plain(
        StatusCode::BAD_GATEWAY,
        "bad gateway: no answer from the upstream server\n",
    )
}

pub(super) fn gateway_timeout() -> Response<UpstreamBody> {
    plain(
        StatusCode::GATEWAY_TIMEOUT,
        "gateway timeout: the upstream server did not answer in time\n",
    )
}

pub(super) fn too_large() -> Response<UpstreamBody> {
    plain(
        StatusCode::PAYLOAD_TOO_LARGE,
        "content too large: the request body is over the proxy's limit\n",
    )
}

/// An answer the proxy makes itself, in plain text.
fn plain(status: StatusCode, text: &'static str) -> Response<UpstreamBody> {
    let mut res = Response::new(Either::Right(Full::from(text)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// Whether the request failed because its body went over the limit.
pub(super) fn cut_off(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source())
        .any(|e| e.is::<http_body_util::LengthLimitError>())
}

/// The error and its causes: the client's own message alone ("client
/// error (Connect)") does not say what went wrong.
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

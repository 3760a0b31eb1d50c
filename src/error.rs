//! What a follower learns when the flight it waited on failed.
//!
//! The layer never invents an error of the inner service's type: the caller
//! whose request ran the origin call gets the inner service's own error or
//! body, untouched. Followers of that flight get a response made by the layer
//! (`502 Bad Gateway`, `500` for a panic, `504` at the wait timeout) whose
//! extensions carry a [`FlightError`] naming the shared cause. This keeps the
//! service's error type equal to the inner one, so the layer drops into
//! `axum::Router::layer`, whose routes are infallible.

use std::fmt;
use std::sync::Arc;

/// Why a flight could not give its followers an answer.
///
/// Cheap to clone: the cause is shared by every follower of the flight, as
/// `tower::buffer` shares its worker's error.
#[derive(Debug, Clone)]
pub struct FlightError {
    kind: FlightErrorKind,
    message: Arc<str>,
}

/// The kind of a [`FlightError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlightErrorKind {
    /// The inner service returned an error.
    Origin,
    /// The inner service's response body failed part-way.
    Body,
    /// The inner service panicked.
    Panic,
    /// The follower waited longer than the configured wait timeout.
    WaitTimeout,
    /// A request the layer sent on for its caller alone (bypassed, or
    /// pass-through) got no answer within
    /// [`direct_timeout`](crate::CoalesceConfig::direct_timeout).
    OriginTimeout,
    /// The flight's task was stopped before it answered (the runtime is
    /// shutting down).
    Dropped,
}

impl FlightError {
    pub(crate) fn new(kind: FlightErrorKind, message: impl Into<Arc<str>>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What failed.
    pub fn kind(&self) -> FlightErrorKind {
        self.kind
    }

    /// The HTTP status a follower's response carries for this error.
    pub fn status(&self) -> http::StatusCode {
        match self.kind {
            FlightErrorKind::Origin | FlightErrorKind::Body => http::StatusCode::BAD_GATEWAY,
            FlightErrorKind::Panic => http::StatusCode::INTERNAL_SERVER_ERROR,
            FlightErrorKind::WaitTimeout | FlightErrorKind::OriginTimeout => {
                http::StatusCode::GATEWAY_TIMEOUT
            }
            FlightErrorKind::Dropped => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl FlightError {
    /// The gRPC status code a gRPC follower's answer carries for this error:
    /// `UNAVAILABLE` (14) when the origin or its body failed or the flight was
    /// stopped, `INTERNAL` (13) for a panic, `DEADLINE_EXCEEDED` (4) at the
    /// wait timeout or the direct timeout.
    pub fn grpc_status(&self) -> u16 {
        match self.kind {
            FlightErrorKind::Origin | FlightErrorKind::Body | FlightErrorKind::Dropped => 14,
            FlightErrorKind::Panic => 13,
            FlightErrorKind::WaitTimeout | FlightErrorKind::OriginTimeout => 4,
        }
    }
}

impl fmt::Display for FlightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            FlightErrorKind::Origin => "the inner service failed",
            FlightErrorKind::Body => "the response body failed",
            FlightErrorKind::Panic => "the inner service panicked",
            FlightErrorKind::WaitTimeout => "timed out waiting for the flight",
            FlightErrorKind::OriginTimeout => "timed out waiting for the inner service",
            FlightErrorKind::Dropped => "the flight was stopped",
        };
        write!(f, "{what}: {}", self.message)
    }
}

impl std::error::Error for FlightError {}

/// Turns a panic payload into a message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Whether a request speaks gRPC, whose clients read failures from
/// `grpc-status`, not from the HTTP status.
pub(crate) fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl FlightError {
    /// The response a caller gets for a flight that failed: the error's HTTP
    /// status, or for a gRPC caller a trailers-only gRPC answer with the matching
    /// status code, so its client reports what happened instead of a protocol
    /// error.
    pub(crate) fn into_response<B>(self, grpc: bool) -> http::Response<crate::CoalesceBody<B>> {
        let error = self;
        let mut res = http::Response::new(crate::CoalesceBody::empty());
        if grpc {
            let headers = res.headers_mut();
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            headers.insert("grpc-status", error.grpc_status().into());
            if let Ok(message) = http::HeaderValue::from_str(&grpc_message(&error.to_string())) {
                headers.insert("grpc-message", message);
            }
        } else {
            *res.status_mut() = error.status();
        }
        res.extensions_mut().insert(error);
        res
    }
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 protocol asks: every
/// byte outside printable ASCII, and `%` itself.
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_status() {
        let e = FlightError::new(FlightErrorKind::Panic, "boom");
        assert_eq!(e.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.to_string(), "the inner service panicked: boom");
        let e = FlightError::new(FlightErrorKind::WaitTimeout, "30s");
        assert_eq!(e.status(), http::StatusCode::GATEWAY_TIMEOUT);
    }

    #[test]
    fn panic_message_reads_str_and_string_payloads() {
        assert_eq!(panic_message(&"a"), "a");
        assert_eq!(panic_message(&String::from("b")), "b");
        assert_eq!(panic_message(&1u8), "panic with a non-string payload");
    }
}

//! The layer's tracing spans, at DEBUG under the target `tower_coalesce`,
//! with fields named after OpenTelemetry's semantic conventions where one
//! fits (`http.request.method`, `http.response.status_code`) and under
//! `coalesce.` where none does:
//!
//! - `coalesce.request`, one per keyed request: its method, the key's
//!   [fingerprint](crate::Key::fingerprint) (`coalesce.key`), and once
//!   answered its status (an integer) and [`Outcome`] (`coalesce.outcome`).
//!   A follower's span follows from the span of each flight it waited on.
//! - `coalesce.flight`, one per flight, a child of its leader's request
//!   span: the key's fingerprint, how the leader's own caller was answered
//!   (`coalesce.role`: `leader` when this flight called the origin,
//!   `follower` when another instance's did, `hit` when the answer was
//!   stored...) and how many followers it had when it landed
//!   (`coalesce.followers`).
//! - `coalesce.refresh`, one per refresh started by a request: the key's
//!   fingerprint and, like a flight, its follower count at landing (the
//!   requests that joined it once their stale answer ran out).
//!
//! With DEBUG off for the target, a request pays a level check and holds
//! no span (`None`: nothing allocated, nothing formatted); the
//! fingerprint is hashed only when a span is recorded.

use crate::{Key, Outcome};
use tracing::field::Empty;

/// A request's span, boxed, while it is recorded: a request that records
/// none holds one pointer, not a span.
pub(crate) type Traced = Option<Box<tracing::Span>>;

/// The span of a keyed request. Inlined, so that a request whose span is
/// off pays the check alone.
#[inline]
pub(crate) fn request<B>(req: &http::Request<B>, key: &Key) -> Traced {
    // Asked first: a disabled span is not free to make and drop (with
    // `tracing`'s `log` feature, which many applications have, it is
    // offered to `log` while no subscriber is set).
    if !tracing::enabled!(target: "tower_coalesce", tracing::Level::DEBUG) {
        return None;
    }
    make_request(req, key)
}

#[inline(never)]
fn make_request<B>(req: &http::Request<B>, key: &Key) -> Traced {
    let span = tracing::debug_span!(
        target: "tower_coalesce",
        "coalesce.request",
        http.request.method = req.method().as_str(),
        http.response.status_code = Empty,
        coalesce.outcome = Empty,
        coalesce.key = %key.fingerprint(),
    );
    (!span.is_disabled()).then(|| Box::new(span))
}

/// Records `res`'s status and outcome in the request's span, if it has one.
#[inline]
pub(crate) fn answered<B>(span: &Traced, res: &http::Response<B>) {
    if let Some(span) = span {
        record_answer(span, res);
    }
}

#[inline(never)]
fn record_answer<B>(span: &tracing::Span, res: &http::Response<B>) {
    span.record("http.response.status_code", res.status().as_u16());
    if let Some(outcome) = res.extensions().get::<Outcome>() {
        span.record("coalesce.outcome", outcome.as_str());
    }
}

/// The span of a flight for `key`.
pub(crate) fn flight(key: &Key) -> tracing::Span {
    tracing::debug_span!(
        target: "tower_coalesce",
        "coalesce.flight",
        coalesce.key = %key.fingerprint(),
        coalesce.role = Empty,
        coalesce.followers = Empty,
    )
}

/// The span of a refresh of `key`.
pub(crate) fn refresh(key: &Key) -> tracing::Span {
    tracing::debug_span!(
        target: "tower_coalesce",
        "coalesce.refresh",
        coalesce.key = %key.fingerprint(),
        coalesce.followers = Empty,
    )
}

/// Records in a flight's span how its leader's own caller was answered.
pub(crate) fn role(span: &tracing::Span, outcome: Outcome) {
    if !span.is_disabled() {
        span.record("coalesce.role", outcome.as_str());
    }
}

//! The proxy's own series, beside the layer's (`coalesce_*`, see the
//! library's `metrics` feature): what clients got, and what the upstream
//! took. Handles are registered once, when the listener starts or the
//! upstream's service is made, so a request costs an atomic add or two and
//! no lookup; without a recorder installed they do nothing.
//!
//! - `coalesce_proxy_responses_total{outcome, status}`: responses by the
//!   layer's outcome (`-` for answers the proxy makes itself: a purge, a bad
//!   target, a protocol upgrade) and status class (`1xx` … `5xx`).
//! - `coalesce_proxy_ttfb_seconds{outcome}`: from the request's head read to
//!   the response's head ready to send: what a client waits before its
//!   first byte.
//! - `coalesce_proxy_upstream_duration_seconds{request}`: from sending a
//!   request upstream to its answer's head (or the failure), for every
//!   upstream request: `flight` for one that leads a flight, `direct` for
//!   the rest (bypassed, passed, protocol upgrades).
//! - `coalesce_proxy_upstream_responses_total{request, status}`: the same
//!   requests by status class, `error` (no answer) or `timeout`.

use http::StatusCode;
use metrics::{Counter, Histogram};
use std::sync::OnceLock;
use std::time::Duration;
use tower_coalesce::Outcome;

/// The outcome labels, in the order of the tables below.
const OUTCOMES: [&str; 8] = [
    "hit",
    "leader",
    "follower",
    "bypass",
    "stale",
    "not-cached",
    "pass",
    "-",
];

/// The status class labels, `1xx` … `5xx`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn outcome_index(outcome: Option<&Outcome>) -> usize {
    let name = outcome.map_or("-", |o| o.as_str());
    OUTCOMES
        .iter()
        .position(|o| *o == name)
        .unwrap_or(OUTCOMES.len() - 1)
}

/// The class of `status`: 0 for `1xx` … 4 for `5xx`.
fn class_index(status: StatusCode) -> usize {
    (usize::from(status.as_u16() / 100).clamp(1, 5)) - 1
}

/// The series of what clients got.
#[derive(Debug, Default)]
pub(crate) struct ResponseMeter {
    responses: [[OnceLock<Counter>; 5]; 8],
    ttfb: [OnceLock<Histogram>; 8],
}

impl ResponseMeter {
    pub(crate) fn new() -> Self {
        describe();
        Self::default()
    }

    /// Counts a response whose head was ready `waited` after its request's.
    pub(crate) fn answered<B>(&self, res: &http::Response<B>, waited: Duration) {
        let outcome = outcome_index(res.extensions().get::<Outcome>());
        let class = class_index(res.status());
        let name = OUTCOMES[outcome];
        self.responses[outcome][class]
            .get_or_init(|| {
                metrics::counter!("coalesce_proxy_responses_total", "outcome" => name, "status" => CLASSES[class])
            })
            .increment(1);
        self.ttfb[outcome]
            .get_or_init(|| metrics::histogram!("coalesce_proxy_ttfb_seconds", "outcome" => name))
            .record(waited.as_secs_f64());
    }
}

/// Which kind of upstream request: one leading a flight, or any other.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Request {
    Flight = 0,
    Direct = 1,
}

/// How an upstream request ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ended {
    Answered(StatusCode),
    Failed,
    TimedOut,
}

/// The series of what the upstream took.
#[derive(Debug, Default)]
pub(crate) struct UpstreamMeter {
    duration: [OnceLock<Histogram>; 2],
    /// Per request kind: the five status classes, `error`, `timeout`.
    responses: [[OnceLock<Counter>; 7]; 2],
}

impl UpstreamMeter {
    pub(crate) fn new() -> Self {
        describe();
        Self::default()
    }

    /// Records an upstream request of `kind` that ended as `ended` after
    /// `took`.
    pub(crate) fn ended(&self, kind: Request, ended: Ended, took: Duration) {
        const KINDS: [&str; 2] = ["flight", "direct"];
        const ENDS: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error", "timeout"];
        let kind = kind as usize;
        self.duration[kind]
            .get_or_init(|| {
                metrics::histogram!("coalesce_proxy_upstream_duration_seconds", "request" => KINDS[kind])
            })
            .record(took.as_secs_f64());
        let end = match ended {
            Ended::Answered(status) => class_index(status),
            Ended::Failed => 5,
            Ended::TimedOut => 6,
        };
        self.responses[kind][end]
            .get_or_init(|| {
                metrics::counter!("coalesce_proxy_upstream_responses_total", "request" => KINDS[kind], "status" => ENDS[end])
            })
            .increment(1);
    }
}

/// Describes the series once, with their units.
fn describe() {
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    DESCRIBED.call_once(|| {
        use metrics::Unit;
        metrics::describe_counter!(
            "coalesce_proxy_responses_total",
            "Responses the proxy sent, by the layer's outcome and status class."
        );
        metrics::describe_histogram!(
            "coalesce_proxy_ttfb_seconds",
            Unit::Seconds,
            "From a request's head read to its response's head ready to send."
        );
        metrics::describe_histogram!(
            "coalesce_proxy_upstream_duration_seconds",
            Unit::Seconds,
            "From sending a request upstream to its answer's head, or its failure."
        );
        metrics::describe_counter!(
            "coalesce_proxy_upstream_responses_total",
            "Upstream requests by how they ended: status class, error or timeout."
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_fall_in_their_class_and_outcomes_in_their_row() {
        assert_eq!(class_index(StatusCode::SWITCHING_PROTOCOLS), 0);
        assert_eq!(class_index(StatusCode::NOT_MODIFIED), 2);
        assert_eq!(class_index(StatusCode::GATEWAY_TIMEOUT), 4);
        assert_eq!(outcome_index(Some(&Outcome::Follower)), 2);
        assert_eq!(outcome_index(Some(&Outcome::NotCached)), 5);
        assert_eq!(outcome_index(None), 7);
    }
}

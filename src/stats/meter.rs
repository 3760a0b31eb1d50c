//! The layer's series in the `metrics` facade (the `metrics` feature): its
//! counters, the responses by outcome, the durations of flights, follower
//! waits, origin and backend calls, and the gauges of flights in progress
//! and of the near cache — every one labelled `layer` with the
//! configuration's [`metrics_label`](crate::CoalesceConfig::metrics_label).
//!
//! The handles are registered, and described, once per layer on its first
//! use, and kept: reporting is then a load of the registered handles and a
//! call through one, never a lookup by name. Not when the layer is built:
//! the facade hands out handles of the recorder installed at registration,
//! and a recorder installed after the layer was built (but before its first
//! request) must get them all.

use super::{Outcome, COUNTERS};
use crate::backend_call::Op;
use ::metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, SharedString, Unit,
};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const RESPONSES: &str = "coalesce_responses_total";
const FLIGHT: &str = "coalesce_flight_duration_seconds";
const FOLLOWER_WAIT: &str = "coalesce_follower_wait_seconds";
const ORIGIN: &str = "coalesce_origin_duration_seconds";
const BACKEND_CALL: &str = "coalesce_backend_call_duration_seconds";
const FLIGHTS: &str = "coalesce_flights_in_progress";
const NEAR_ENTRIES: &str = "coalesce_near_cache_entries";
const NEAR_BYTES: &str = "coalesce_near_cache_bytes";

/// Every outcome, where [`slot`] puts it.
const OUTCOMES: [Outcome; 7] = [
    Outcome::Hit,
    Outcome::Leader,
    Outcome::Follower,
    Outcome::Bypass,
    Outcome::Stale,
    Outcome::NotCached,
    Outcome::Pass,
];

fn slot(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Hit => 0,
        Outcome::Leader => 1,
        Outcome::Follower => 2,
        Outcome::Bypass => 3,
        Outcome::Stale => 4,
        Outcome::NotCached => 5,
        Outcome::Pass => 6,
    }
}

/// When something timed began.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started(Instant);

impl Started {
    pub(crate) fn now() -> Self {
        Self(Instant::now())
    }
}

/// One layer's series. Cheap to clone: every clone reports to the same
/// handles.
#[derive(Clone, Default)]
pub(crate) struct Meter(Arc<Inner>);

struct Inner {
    label: Arc<str>,
    /// Whose near cache the gauges report.
    backend: Option<Arc<dyn crate::Backend>>,
    handles: OnceLock<Handles>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            label: Arc::from(crate::CoalesceConfig::DEFAULT_METRICS_LABEL),
            backend: None,
            handles: OnceLock::new(),
        }
    }
}

struct Handles {
    /// In the order of [`COUNTERS`].
    counters: Vec<Counter>,
    /// By [`slot`].
    responses: [Counter; OUTCOMES.len()],
    flight: Histogram,
    follower_wait: Histogram,
    origin: Histogram,
    /// By [`Op`]'s discriminant.
    backend: [Histogram; Op::ALL.len()],
    flights: Gauge,
    near_entries: Gauge,
    near_bytes: Gauge,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("label", &self.0.label)
            .field("registered", &self.0.handles.get().is_some())
            .finish()
    }
}

impl Meter {
    /// The series of a layer configured with `config`.
    pub(crate) fn of(config: &crate::CoalesceConfig) -> Self {
        Self(Arc::new(Inner {
            label: Arc::from(config.metrics_label.as_str()),
            backend: Some(config.backend.clone()),
            handles: OnceLock::new(),
        }))
    }

    #[inline]
    fn handles(&self) -> &Handles {
        self.0.handles.get_or_init(|| register(&self.0.label))
    }

    /// One more of the counter at `index` in [`COUNTERS`].
    #[inline]
    pub(crate) fn count(&self, index: usize) {
        self.handles().counters[index].increment(1);
    }

    /// One more response answered as `outcome`.
    #[inline]
    pub(crate) fn response(&self, outcome: Outcome) {
        self.handles().responses[slot(outcome)].increment(1);
    }

    /// A flight landed, having started at `started`.
    pub(crate) fn flight(&self, started: Started) {
        self.handles().flight.record(started.0.elapsed());
    }

    /// A follower that joined at `started` has its answer's head.
    pub(crate) fn follower_wait(&self, started: Started) {
        self.handles().follower_wait.record(started.0.elapsed());
    }

    /// A flight's call to the inner service, made at `started`, has its
    /// answer's head (or its error).
    pub(crate) fn origin(&self, started: Started) {
        self.handles().origin.record(started.0.elapsed());
    }

    /// A backend call of `op` took `took`.
    pub(crate) fn backend_call(&self, op: Op, took: Duration) {
        self.handles().backend[op as usize].record(took);
    }

    /// `n` flights are under way in this process.
    pub(crate) fn flights(&self, n: usize) {
        self.handles().flights.set(n as f64);
    }

    /// Reads how much the backend holds in this process's memory, if it
    /// says.
    pub(crate) fn near_cache(&self) {
        let Some(size) = self.0.backend.as_ref().and_then(|b| b.local_size()) else {
            return;
        };
        let handles = self.handles();
        handles.near_entries.set(size.entries as f64);
        handles.near_bytes.set(size.bytes as f64);
    }
}

/// Describes every series and registers this layer's handles with the
/// recorder installed now.
#[cold]
fn register(label: &Arc<str>) -> Handles {
    let layer = || SharedString::from_shared(label.clone());
    for (name, help) in COUNTERS {
        describe_counter!(*name, Unit::Count, *help);
    }
    describe_counter!(
        RESPONSES,
        Unit::Count,
        "Responses by outcome (the `outcome` label: hit, leader, follower, bypass, stale, not-cached, pass), counted as each is decided."
    );
    describe_histogram!(
        FLIGHT,
        Unit::Seconds,
        "How long flights took from their start until they landed: until their followers had the answer (its head, for a streamed one)."
    );
    describe_histogram!(
        FOLLOWER_WAIT,
        Unit::Seconds,
        "How long followers waited, from joining a flight until their answer's head."
    );
    describe_histogram!(
        ORIGIN,
        Unit::Seconds,
        "How long flights' calls to the inner service took until the response head."
    );
    describe_histogram!(
        BACKEND_CALL,
        Unit::Seconds,
        "How long backend calls took, by operation (the `op` label), timeouts included."
    );
    describe_gauge!(FLIGHTS, Unit::Count, "Flights under way in this process.");
    describe_gauge!(
        NEAR_ENTRIES,
        Unit::Count,
        "Entries the backend holds in this process's memory (the near cache), read as flights end and purges run."
    );
    describe_gauge!(
        NEAR_BYTES,
        Unit::Bytes,
        "Bytes the backend holds in this process's memory (the near cache), read as flights end and purges run."
    );
    Handles {
        counters: COUNTERS
            .iter()
            .map(|(name, _)| counter!(*name, "layer" => layer()))
            .collect(),
        responses: OUTCOMES
            .map(|outcome| counter!(RESPONSES, "layer" => layer(), "outcome" => outcome.as_str())),
        flight: histogram!(FLIGHT, "layer" => layer()),
        follower_wait: histogram!(FOLLOWER_WAIT, "layer" => layer()),
        origin: histogram!(ORIGIN, "layer" => layer()),
        backend: Op::ALL
            .map(|op| histogram!(BACKEND_CALL, "layer" => layer(), "op" => op.as_str())),
        flights: gauge!(FLIGHTS, "layer" => layer()),
        near_entries: gauge!(NEAR_ENTRIES, "layer" => layer()),
        near_bytes: gauge!(NEAR_BYTES, "layer" => layer()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_slot() {
        for (i, outcome) in OUTCOMES.into_iter().enumerate() {
            assert_eq!(slot(outcome), i, "{outcome}");
        }
    }

    #[test]
    fn every_op_is_where_its_discriminant_says() {
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op as usize, i, "{}", op.as_str());
        }
    }
}

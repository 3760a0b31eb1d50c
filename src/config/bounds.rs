//! Bounds on what the layer waits for outside flights.

use super::CoalesceConfig;
use std::time::Duration;

impl CoalesceConfig {
    /// The longest the layer waits for the inner service's answer (its
    /// head) to a request it sends on for its caller alone: bypassed ones
    /// (no key, credentials, unsafe methods) and pass-through ones. Past
    /// it, the caller gets `504 Gateway Timeout` (a gRPC caller
    /// `DEADLINE_EXCEEDED`) with a [`FlightError`](crate::FlightError) of
    /// kind [`OriginTimeout`](crate::FlightErrorKind::OriginTimeout), the
    /// inner call is dropped, and [`Stats::origin_timeouts`](crate::Stats::origin_timeouts)
    /// counts it. Flights are bounded by [`wait_timeout`](Self::wait_timeout)
    /// instead. Default: none — an application with long-polling or
    /// streaming endpoints behind the layer sets what suits them; a proxy
    /// should always set one (`coalesce-proxy` does).
    pub fn direct_timeout(mut self, limit: Duration) -> Self {
        self.direct_timeout = Some(limit);
        self
    }
}

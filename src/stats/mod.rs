//! Counters for everything the layer decides, and the per-response [`Outcome`].
//!
//! The counters are plain relaxed atomics: they are read for reporting, never
//! used to make a decision, so they must never cost a lock on the request path.
//! With the `metrics` feature the layer's [`Meter`] also reports them, with
//! the durations and gauges the counters cannot show (`meter`); without it,
//! the meter is an empty stand-in that compiles to nothing (`unmetered`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

mod marks;
#[cfg(feature = "metrics")]
mod meter;
#[cfg(not(feature = "metrics"))]
#[path = "unmetered.rs"]
mod meter;
pub(crate) use marks::{mark, Forwarded, Fwd, Marks};
pub(crate) use meter::{Meter, Started};

/// How one response was produced. Inserted into every response's extensions,
/// and optionally written as a response header (see
/// [`CoalesceConfig::outcome_header`](crate::CoalesceConfig::outcome_header)).
///
/// The inner service sees it too, in the extensions of the requests the
/// layer sends it: [`Outcome::Leader`] on a flight's request, whose answer
/// may go to every request with its key (so it must not depend on anything
/// of this caller's outside the key: leave per-client values such as the
/// client's address out of what the answer is made from), and
/// [`Outcome::Pass`] on a request answered to its own caller alone. A
/// bypassed request reaches it untouched, with none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Answered from the backend's cache; the inner service was not called.
    Hit,
    /// This request's own call to the inner service answered it and every
    /// follower of its flight.
    Leader,
    /// Waited on another request's flight and received its answer.
    Follower,
    /// The extractor gave no key: the inner service answered, untouched.
    Bypass,
    /// Answered at once from a stored answer whose freshness is over but
    /// which may still be served while one refresh fetches the next (see
    /// [`CoalesceConfig::stale_while_revalidate`](crate::CoalesceConfig::stale_while_revalidate));
    /// the inner service was not called for it.
    Stale,
    /// The request asked for a stored answer only (`Cache-Control:
    /// only-if-cached`) and this process held none: answered `504 Gateway
    /// Timeout` without calling the inner service (RFC 9111 §5.2.1.7).
    NotCached,
    /// Passed: called the inner service on its own, because its key's
    /// answers cannot be shared (the flight it joined found so, or the key
    /// is remembered as pass-through), or because the flight's answer varies
    /// on headers it sent other values of.
    Pass,
}

impl Outcome {
    /// The lower-case name used in the outcome header: `hit`, `leader`,
    /// `follower`, `bypass`, `stale`, `not-cached` or `pass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Leader => "leader",
            Outcome::Follower => "follower",
            Outcome::Bypass => "bypass",
            Outcome::Pass => "pass",
            Outcome::Stale => "stale",
            Outcome::NotCached => "not-cached",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of the layer's counters, from
/// [`CoalesceLayer::stats`](crate::CoalesceLayer::stats).
///
/// Every counter only grows. Each request is counted once among `bypasses`,
/// `passes`, `hits` (answered from memory before any flight), `flights` and
/// `followers`, except that a request re-elected after an abandoned flight
/// counts again under its second role, and a flight whose leader then finds
/// the answer in the backend also counts a hit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Requests seen by the layer.
    pub requests: u64,
    /// Requests the extractor gave no key: passed to the inner service.
    pub bypasses: u64,
    /// Requests answered from the backend's cache.
    pub hits: u64,
    /// Flights started: requests that became the leader of their key in this process.
    pub flights: u64,
    /// Requests that joined another request's flight in this process.
    pub followers: u64,
    /// Calls made to the inner service for keyed requests (by leaders, and by
    /// followers that had to call it themselves).
    pub origin_calls: u64,
    /// Answers stored in the backend.
    pub stored: u64,
    /// Flights whose answer could not be shared (`Set-Cookie`, `private`,
    /// `no-store`...), so that their followers passed. Reported as `coalesce_passed_flights_total`.
    pub passed_flights: u64,
    /// Flights that failed: the inner service returned an error, its body
    /// stream failed, or it panicked.
    pub errors: u64,
    /// Flights whose inner call panicked (also counted in `errors`).
    pub panics: u64,
    /// Followers whose flight ended without an answer and who were re-elected.
    pub dangling: u64,
    /// Flights that reached the wait timeout.
    pub wait_timeouts: u64,
    /// Flights cancelled because every caller had gone (only when
    /// [`CoalesceConfig::complete_abandoned`](crate::CoalesceConfig::complete_abandoned) is off).
    pub cancelled: u64,
    /// Backend operations that failed; the request went on without the backend.
    pub backend_errors: u64,
    /// Backend operations not tried because the backend kept failing (see
    /// [`CoalesceConfig::backend_cooldown`](crate::CoalesceConfig::backend_cooldown)).
    pub backend_skipped: u64,
    /// Flights that found the key leased by another process and waited on it
    /// (counted once they listen for its end).
    pub remote_waits: u64,
    /// Waiting flights that took the lease over (its holder went away).
    pub takeovers: u64,
    /// Answers another process stopped streaming mid-body, whose rest this
    /// process asked the origin for with a `Range` request.
    pub resumes: u64,
    /// Leases found lost, by the watchdog or at completion (each lease once).
    pub lease_lost: u64,
    /// Requests sent straight to the origin because their key's last answer
    /// could not be shared (see `pass_ttl`).
    pub passes: u64,
    /// Requests answered with a stale stored answer while it was refreshed
    /// ([`Outcome::Stale`]); those that followed a flight to it are also
    /// counted as `followers`.
    pub stale: u64,
    /// Refreshes run: flights, detached from any caller, that fetched the
    /// next answer for a stale one (or, early, for a fresh one).
    pub refreshes: u64,
    /// Hits that asked for an early refresh (see
    /// [`CoalesceConfig::early_refresh`](crate::CoalesceConfig::early_refresh));
    /// one already under way, or failed within the last second, is not
    /// started again.
    pub early_refreshes: u64,
    /// Refreshes the origin answered `304 Not Modified` to, which renewed
    /// the stored answer's headers and freshness without a new body.
    pub revalidations: u64,
    /// Flights whose origin failed (an error, a failed body, a `5xx`) and
    /// whose callers were given the stale answer instead (stale-if-error).
    pub stale_on_error: u64,
    /// Purges made through this layer: by its
    /// [`Purger`](crate::Purger), and by answers to unsafe requests (see
    /// [`CoalesceConfig::invalidate_on_unsafe`](crate::CoalesceConfig::invalidate_on_unsafe)).
    pub purges: u64,
    /// Answers not stored because a purge of what they name landed while
    /// they were fetched: they were made from data read before it.
    pub purge_fenced: u64,
    /// Followers that joined after a purge of what their flight's answer
    /// turned out to carry (a tag), and went to a new flight instead.
    pub purge_reruns: u64,
    /// Successful writes whose purges could not be recorded (see
    /// [`CoalesceConfig::write_purge_failure`](crate::CoalesceConfig::write_purge_failure)):
    /// other processes may serve what they changed until it expires.
    pub write_purge_failures: u64,
    /// Requests sent on for their caller alone (bypassed, pass-through)
    /// that got no answer within
    /// [`direct_timeout`](crate::CoalesceConfig::direct_timeout).
    pub origin_timeouts: u64,
}

/// One event count, and with the `metrics` feature its series in the
/// `metrics` facade (`coalesce_<name>_total`), as the layer's [`Meter`]
/// registered it.
#[derive(Debug)]
pub(crate) struct Counter {
    value: AtomicU64,
    /// The layer's meter, and where this counter is among its handles.
    #[cfg(feature = "metrics")]
    meter: (Meter, usize),
}

impl Counter {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn new(meter: &Meter, index: usize) -> Self {
        Self {
            value: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            meter: (meter.clone(), index),
        }
    }

    fn load(&self) -> u64 {
        self.value.load(Relaxed)
    }
}

macro_rules! counters {
    ($($name:ident: $help:literal),* $(,)?) => {
        #[derive(Debug)]
        pub(crate) struct Counters {
            $(pub(crate) $name: Counter,)*
        }

        /// Where each counter is in [`COUNTERS`].
        #[allow(non_camel_case_types)]
        enum At {
            $($name,)*
        }

        /// Every counter's series name and help text, in the order the
        /// fields are declared.
        #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
        pub(crate) const COUNTERS: &[(&str, &str)] = &[
            $((concat!("coalesce_", stringify!($name), "_total"), $help),)*
        ];

        impl Counters {
            /// Counters reported (with the `metrics` feature) through `meter`.
            pub(crate) fn new(meter: &Meter) -> Self {
                Self {
                    $($name: Counter::new(meter, At::$name as usize),)*
                }
            }

            pub(crate) fn snapshot(&self) -> Stats {
                Stats { $($name: self.$name.load(),)* }
            }
        }

        impl Stats {
            /// Every counter, each with the name the `metrics` feature
            /// reports it under (`coalesce_<field>_total`), in the order the
            /// fields are declared: for exporting the counters without
            /// listing them by hand. A `Vec`, so that its type stays the
            /// same as counters are added.
            ///
            /// ```
            /// let stats = tower_coalesce::Stats::default();
            /// let (name, value) = stats.counters()[0];
            /// assert_eq!((name, value), ("coalesce_requests_total", 0));
            /// ```
            pub fn counters(&self) -> Vec<(&'static str, u64)> {
                vec![$((concat!("coalesce_", stringify!($name), "_total"), self.$name),)*]
            }
        }
    };
}

counters!(
    requests: "Requests seen by the layer.",
    bypasses: "Requests the layer did not key, passed to the inner service untouched.",
    hits: "Requests answered from storage.",
    flights: "Flights started in this process.",
    followers: "Requests that joined another request's flight in this process.",
    origin_calls: "Calls made to the inner service for keyed requests.",
    stored: "Answers stored in the backend.",
    passed_flights: "Flights whose answer could not be shared.",
    errors: "Flights that failed: an error, a failed body or a panic.",
    panics: "Flights whose inner call panicked.",
    dangling: "Followers whose flight ended without an answer, re-elected.",
    wait_timeouts: "Flights that reached the wait timeout.",
    cancelled: "Flights cancelled because every caller had gone.",
    backend_errors: "Backend operations that failed or timed out.",
    backend_skipped: "Backend operations skipped while the backend kept failing.",
    remote_waits: "Flights that waited on another process's lease.",
    takeovers: "Waiting flights that took another process's lease over.",
    resumes: "Answers another process stopped streaming mid-body, resumed from the origin with a Range request.",
    lease_lost: "Leases found lost, by the watchdog or at completion.",
    passes: "Requests sent straight to the origin: their key's answers cannot be shared.",
    stale: "Requests answered with a stale stored answer.",
    refreshes: "Refreshes run: flights that fetched the next answer for a stale one.",
    early_refreshes: "Hits that asked for an early refresh.",
    revalidations: "Refreshes answered 304 Not Modified, which renewed the stored answer.",
    stale_on_error: "Flights whose failing origin was stood in for by the stale answer.",
    purges: "Purges made through this layer.",
    purge_fenced: "Answers not stored because a purge landed during their fill.",
    purge_reruns: "Followers sent to a new flight: their flight's answer was purged.",
    write_purge_failures: "Successful writes whose purges could not be recorded.",
    origin_timeouts: "Direct calls that got no answer within the direct timeout.",
);

#[cfg(test)]
impl Default for Counters {
    fn default() -> Self {
        Self::new(&Meter::of(&crate::CoalesceConfig::new()))
    }
}

/// Adds one to a counter (and to its `metrics` series, with that feature).
#[inline]
pub(crate) fn bump(counter: &Counter) {
    counter.value.fetch_add(1, Relaxed);
    #[cfg(feature = "metrics")]
    counter.meter.0.count(counter.meter.1);
}

#[cfg(test)]
mod tests;

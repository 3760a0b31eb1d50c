//! How long a stored answer stays fresh: a fixed time the application
//! chose, or what the origin says (RFC 9111 §4.2, for a shared cache).

use crate::policy::Directive;
use http::{header, response, HeaderMap, StatusCode};
use std::time::{Duration, SystemTime};

/// How long stored answers stay fresh. Set with
/// [`CoalesceConfig::freshness`](crate::CoalesceConfig::freshness) (or
/// [`ttl`](crate::CoalesceConfig::ttl), for a fixed time).
///
/// Whichever is chosen, answers that may not be shared (`private`,
/// `no-store`, `Set-Cookie`, ...) are never stored, nor server errors nor
/// `no-cache` answers (see the README's "What is cached, and for how long").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Every answer that may be stored is fresh for this long, whatever the
    /// origin's `max-age`, `Expires` or `Age` say: the application knows how
    /// stale its data may be. Zero stores nothing: only requests that arrive
    /// during a flight share its answer.
    Fixed(Duration),
    /// Each answer is fresh for as long as the origin says, as RFC 9111
    /// computes it for a shared cache.
    Origin(OriginFreshness),
}

/// The settings of [`Freshness::Origin`].
///
/// An answer's freshness lifetime is the first of (RFC 9111 §4.2.1):
/// `s-maxage`, `max-age`, `Expires` minus `Date`; without any, the
/// [heuristic](Self::heuristic) if enabled, else [`default_ttl`](Self::default_ttl)
/// — both only for statuses RFC 9110 §15.1 calls heuristically cacheable
/// (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501). What is left of
/// it once the answer's age on arrival is taken off (§4.2.3: the origin's
/// `Age`, the time in transit, and the time since its `Date`) is how long it
/// is stored, at most [`max_ttl`](Self::max_ttl).
///
/// Freshness information that cannot be read counts as none left: a
/// `max-age` or `s-maxage` that is not a number makes the answer stale on
/// arrival, as does an `Expires` that is not a date (`Expires: 0`); two
/// conflicting values of one directive too. A number too large to hold is
/// 2^31 seconds (§1.2.2), never zero — and then capped by `max_ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginFreshness {
    default_ttl: Duration,
    max_ttl: Duration,
    max_stale: Duration,
    heuristic: bool,
}

impl Default for OriginFreshness {
    fn default() -> Self {
        Self::new()
    }
}

impl OriginFreshness {
    /// No default freshness, no heuristic, answers kept at most a day.
    pub const fn new() -> Self {
        Self {
            default_ttl: Duration::ZERO,
            max_ttl: Duration::from_secs(24 * 60 * 60),
            max_stale: Duration::from_secs(60 * 60),
            heuristic: false,
        }
    }

    /// The longest an answer is served stale after its freshness ends,
    /// whatever its `stale-while-revalidate` or `stale-if-error` say
    /// (default an hour). The
    /// backend keeps each answer for its freshness plus the longer window,
    /// so this bounds the memory stale answers hold.
    pub const fn max_stale(mut self, window: Duration) -> Self {
        self.max_stale = window;
        self
    }

    /// How long an answer without explicit freshness (no `max-age`,
    /// `s-maxage` or `Expires`) is fresh, when the heuristic is off. Zero
    /// (the default): not stored, only shared with its flight.
    pub const fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// The longest any answer is stored, whatever the origin says (default
    /// a day). It bounds the memory one answer can hold in the backend.
    pub const fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = ttl;
        self
    }

    /// Gives answers without explicit freshness but with a `Last-Modified`
    /// a tenth of the time since then (RFC 9111 §4.2.2; browsers and Squid
    /// do so). Off by default, as in nginx and Varnish: an origin that
    /// wants its answers kept says so.
    pub const fn heuristic(mut self, on: bool) -> Self {
        self.heuristic = on;
        self
    }

    pub(crate) fn durations(&self) -> [(&'static str, Duration); 3] {
        [
            ("default_ttl", self.default_ttl),
            ("max_ttl", self.max_ttl),
            ("max_stale", self.max_stale),
        ]
    }
}

/// RFC 9111 §1.2.2: a delta-seconds too large to hold.
const OVERFLOW: u64 = 1 << 31;

/// How long, once its freshness ends, an answer may be served stale while it
/// is refreshed: its `stale-while-revalidate` (RFC 5861), within
/// `max_stale`; none when the origin forbids serving it stale —
/// `must-revalidate`, `proxy-revalidate`, or `s-maxage`, which implies
/// `proxy-revalidate` for a shared cache (RFC 9111 §5.2.2.10, §4.2.4) — or
/// when the window cannot be read.
pub(crate) fn stale_window(settings: &OriginFreshness, directives: &[Directive<'_>]) -> Duration {
    window(settings, directives, "stale-while-revalidate")
}

/// How long, once its freshness ends, an answer may be served instead of
/// an error from the origin: its `stale-if-error` (RFC 5861), on the same
/// terms as [`stale_window`].
pub(crate) fn error_window(settings: &OriginFreshness, directives: &[Directive<'_>]) -> Duration {
    window(settings, directives, "stale-if-error")
}

/// Whether the origin forbids serving its answer stale from a shared cache:
/// `must-revalidate`, `proxy-revalidate`, or `s-maxage`, which carries
/// `proxy-revalidate`'s meaning (RFC 9111 §5.2.2.10). It holds under
/// [`Freshness::Fixed`] too: a fixed time replaces the origin's freshness,
/// not its rule against stale answers.
pub(crate) fn forbids_stale(directives: &[Directive<'_>]) -> bool {
    let forbids = ["must-revalidate", "proxy-revalidate", "s-maxage"];
    directives.iter().any(|d| forbids.iter().any(|f| d.is(f)))
}

fn window(settings: &OriginFreshness, directives: &[Directive<'_>], name: &str) -> Duration {
    if forbids_stale(directives) {
        return Duration::ZERO;
    }
    let mut windows = directives.iter().filter(|d| d.is(name));
    let Some(first) = windows.next() else {
        return Duration::ZERO;
    };
    let seconds = first.arg.and_then(delta_seconds);
    if windows.any(|d| d.arg.and_then(delta_seconds) != seconds) {
        return Duration::ZERO;
    }
    seconds.map_or(Duration::ZERO, |s| {
        Duration::from_secs(s).min(settings.max_stale)
    })
}

/// How long an answer that arrived at `received`, asked for at
/// `requested`, may be stored and served as fresh: its freshness lifetime
/// less its age on arrival, within `max_ttl`; and that age.
pub(crate) fn remaining(
    settings: &OriginFreshness,
    head: &response::Parts,
    (directives, expires): (&[Directive<'_>], bool),
    requested: SystemTime,
    received: SystemTime,
) -> (Duration, Duration) {
    let headers = &head.headers;
    // A `Date` that cannot be read is none; then the time of arrival stands
    // for it (RFC 9110 §6.6.1).
    let date = http_date(headers, header::DATE, received)
        .ok()
        .flatten()
        .or(Some(received));
    let age = age_on_arrival(headers, date, requested, received);
    let lifetime = lifetime(settings, head, (directives, expires), date, received);
    (lifetime.saturating_sub(age).min(settings.max_ttl), age)
}

/// The freshness lifetime (§4.2.1); zero for whatever cannot be read.
fn lifetime(
    settings: &OriginFreshness,
    head: &response::Parts,
    (directives, expires): (&[Directive<'_>], bool),
    date: Option<SystemTime>,
    received: SystemTime,
) -> Duration {
    let headers = &head.headers;
    for name in ["s-maxage", "max-age"] {
        let mut found = directives.iter().filter(|d| d.is(name));
        if let Some(first) = found.next() {
            let seconds = first.arg.and_then(delta_seconds);
            // Conflicting values: the response is stale (§4.2.1 allows
            // either; this is the cautious one).
            let conflicting = found.any(|d| d.arg.and_then(delta_seconds) != seconds);
            return match seconds {
                Some(s) if !conflicting => Duration::from_secs(s),
                _ => Duration::ZERO,
            };
        }
    }
    if expires && headers.contains_key(header::EXPIRES) {
        // An invalid date, `0` above all, is in the past (§5.3).
        return match (http_date(headers, header::EXPIRES, received), date) {
            (Ok(Some(expires)), Some(date)) => expires.duration_since(date).unwrap_or_default(),
            _ => Duration::ZERO,
        };
    }
    if !heuristically_cacheable(head.status) {
        return Duration::ZERO;
    }
    if settings.heuristic {
        let since = http_date(headers, header::LAST_MODIFIED, received)
            .ok()
            .flatten()
            .and_then(|modified| date.unwrap_or(received).duration_since(modified).ok());
        if let Some(since) = since {
            return since / 10;
        }
    }
    settings.default_ttl
}

/// The answer's age when it arrived (§4.2.3's `corrected_initial_age`): the
/// larger of the time since its `Date` and its `Age` plus the time the
/// exchange took.
fn age_on_arrival(
    headers: &HeaderMap,
    date: Option<SystemTime>,
    requested: SystemTime,
    received: SystemTime,
) -> Duration {
    let apparent = date
        .and_then(|date| received.duration_since(date).ok())
        .unwrap_or_default();
    let delay = received.duration_since(requested).unwrap_or_default();
    let corrected = crate::entry::initial_age(headers).saturating_add(delay);
    apparent.max(corrected)
}

/// A date header: `Ok(None)` if absent, `Err` if present but not one HTTP
/// date (several lines count as unreadable); read as `date` says, `now`
/// deciding a two-digit year's century.
fn http_date(
    headers: &HeaderMap,
    name: header::HeaderName,
    now: SystemTime,
) -> Result<Option<SystemTime>, ()> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(());
    }
    let text = first.to_str().map_err(|_| ())?;
    date::parse(text, now).map(Some).ok_or(())
}

/// `1*DIGIT` (§1.2.2); too large to hold is 2^31; anything else is `None`.
pub(crate) fn delta_seconds(arg: &str) -> Option<u64> {
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(arg.parse::<u64>().map_or(OVERFLOW, |s| s.min(OVERFLOW)))
}

/// RFC 9110 §15.1: the statuses that may be given heuristic freshness.
/// (206 is in the list too, but this layer never stores one.)
pub(crate) fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

mod date;
#[cfg(test)]
mod tests;

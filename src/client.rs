//! What a client's request asks of the cache (RFC 9111 §5.2.1): not to be
//! answered from storage (`no-cache`, `max-age=0`, `Pragma: no-cache`), an
//! answer no older or no closer to stale than some bound (`max-age`,
//! `min-fresh`), only a stored answer (`only-if-cached`), that nothing of
//! its exchange be stored (`no-store`), or that a stale answer will do
//! (`max-stale`). Honoured unless
//! [`CoalesceConfig::client_directives`](crate::CoalesceConfig::client_directives)
//! is off. A request that may not be answered from storage still joins the
//! flight under way for its key, so a flood of them costs the origin one
//! call per flight, not one each. A `no-store` request joins a flight under
//! way but never leads one: alone, it goes to the origin for itself, so a
//! flood of them cannot keep a key's answer from being stored.

use crate::policy::directives;
use crate::Entry;
use http::header::{self, HeaderMap};
use std::time::{Duration, SystemTime};

/// The request headers that ask something of a cache.
const ASKING: [header::HeaderName; 2] = [header::CACHE_CONTROL, header::PRAGMA];

/// What one request asks; in the request's extensions when it leads a
/// flight, so the flight looks past a stored answer it may not use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Asks {
    reload: bool,
    max_age: Option<Duration>,
    min_fresh: Option<Duration>,
    only_if_cached: bool,
    no_store: bool,
    /// How stale an answer it takes (`Duration::MAX` for `max-stale`
    /// without a value).
    max_stale: Option<Duration>,
}

impl Asks {
    /// What the request asks, or `None` for nothing (no `Cache-Control` or
    /// `Pragma`, the common case; or nothing this cache acts on). A
    /// `Cache-Control` that cannot be read asks nothing.
    pub(crate) fn of(headers: &HeaderMap) -> Option<Asks> {
        // Asked of every keyed request, hits included: one pass over its
        // few header names, not two hashed lookups.
        if !crate::conditions::has_any(headers, &ASKING) {
            return None;
        }
        let control = headers.contains_key(header::CACHE_CONTROL);
        let mut asks = Asks::default();
        if control {
            for d in directives(headers).unwrap_or_default() {
                let seconds = || {
                    d.arg
                        .and_then(crate::freshness::delta_seconds)
                        .map(Duration::from_secs)
                };
                if d.is("no-cache") {
                    asks.reload = true;
                } else if d.is("max-age") {
                    asks.max_age = seconds();
                } else if d.is("min-fresh") {
                    asks.min_fresh = seconds();
                } else if d.is("only-if-cached") {
                    asks.only_if_cached = true;
                } else if d.is("no-store") {
                    asks.no_store = true;
                } else if d.is("max-stale") {
                    // Without a value: any staleness; one that cannot be
                    // read: none.
                    asks.max_stale = match d.arg {
                        None => Some(Duration::MAX),
                        Some(_) => seconds(),
                    };
                }
            }
        } else {
            // `Pragma: no-cache` counts only without `Cache-Control` (§5.4).
            asks.reload = headers
                .get_all(header::PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|token| token.trim().eq_ignore_ascii_case("no-cache"));
        }
        (asks != Asks::default()).then_some(asks)
    }

    /// Whether `entry`, stored, may answer this request.
    pub(crate) fn accepts(&self, entry: &Entry) -> bool {
        if self.reload {
            return false;
        }
        let now = SystemTime::now();
        if let (Some(max), Some(age)) = (self.max_age, entry.age(now)) {
            if age > max {
                return false;
            }
        }
        if let (Some(min), Some(left)) = (self.min_fresh, entry.fresh_for(now)) {
            if left < min {
                return false;
            }
        }
        true
    }

    /// Whether this request takes `entry`, stored and stale past the windows
    /// in which it may be served, as it is (`max-stale`, RFC 9111
    /// §5.2.1.2): stale by no more than it allows, and not an answer the
    /// origin forbids serving stale (`must-revalidate`, `proxy-revalidate`,
    /// `s-maxage`, `no-cache`, in its `Cache-Control` or in the targeted
    /// field that decided for it, among `targeted`).
    pub(crate) fn takes_stale(&self, entry: &Entry, targeted: &[header::HeaderName]) -> bool {
        let Some(max) = self.max_stale else {
            return false;
        };
        if self.reload
            || entry
                .stale_for(SystemTime::now())
                .is_none_or(|over| over > max)
        {
            return false;
        }
        let stored = entry.headers();
        let control = crate::targeted::cache_control(stored, targeted);
        let Ok(directives) = directives(control.as_ref().unwrap_or(stored)) else {
            return false;
        };
        !crate::freshness::forbids_stale(&directives)
            && !directives.iter().any(|d| d.is("no-cache"))
    }

    /// Whether nothing of this request's exchange may be stored (RFC 9111
    /// §5.2.1.5): it may be answered from storage, or by a flight under
    /// way, but leads none.
    pub(crate) fn no_store(&self) -> bool {
        self.no_store
    }

    /// Whether only a stored answer will do.
    pub(crate) fn only_if_cached(&self) -> bool {
        self.only_if_cached
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{StatusCode, Version};

    fn asks(headers: &[(&str, &str)]) -> Option<Asks> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Asks::of(&map)
    }

    fn stored(age: u64) -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert(header::AGE, age.to_string().parse().unwrap());
        Entry::new(
            StatusCode::OK,
            Version::HTTP_11,
            headers,
            Bytes::new(),
            None,
        )
        .stored(SystemTime::now())
    }

    #[test]
    fn no_cache_max_age_zero_and_pragma_ask_for_the_origin() {
        for headers in [
            &[("cache-control", "no-cache")][..],
            &[("cache-control", "max-age=0")],
            &[("pragma", "no-cache")],
            &[("pragma", "x, No-Cache")],
        ] {
            let a = asks(headers).unwrap();
            assert!(!a.accepts(&stored(1)), "{headers:?}");
        }
        // Pragma only counts without Cache-Control.
        let a = asks(&[("cache-control", "max-age=60"), ("pragma", "no-cache")]).unwrap();
        assert!(a.accepts(&stored(1)));
        // Nothing asked, or nothing this cache acts on.
        assert_eq!(asks(&[]), None);
        assert_eq!(asks(&[("cache-control", "no-transform")]), None);
        assert_eq!(asks(&[("cache-control", "max-age=\"")]), None);
        assert_eq!(asks(&[("pragma", "x")]), None);
    }

    #[test]
    fn max_age_and_min_fresh_bound_the_stored_answer() {
        let a = asks(&[("cache-control", "max-age=10")]).unwrap();
        assert!(a.accepts(&stored(5)));
        assert!(!a.accepts(&stored(11)));
        // An entry whose freshness is not known is not refused by min-fresh.
        let a = asks(&[("cache-control", "min-fresh=5")]).unwrap();
        assert!(a.accepts(&stored(0)));
        assert!(asks(&[("cache-control", "only-if-cached")])
            .unwrap()
            .only_if_cached());
    }
}

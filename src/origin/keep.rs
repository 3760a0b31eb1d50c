//! What of an answer is kept, and for how long: decided by its
//! `Cache-Control` and `Expires`, or the targeted field that stands for them.

use crate::entry::Life;
use crate::freshness::Freshness;
use crate::policy::{self, Sharing};
use crate::Entry;
use http::header;
use std::time::{Duration, SystemTime};

/// An answer to store: marked as stored, and for how long it stays fresh.
#[derive(Clone)]
pub(crate) struct Keep {
    pub(crate) entry: Entry,
    pub(crate) ttl: std::time::Duration,
}

impl Keep {
    /// `entry` to store, if `sharing` allows and it has freshness; marked
    /// as stored now, so that answers later made from it carry their `Age`.
    pub(super) fn of(
        entry: &Entry,
        sharing: Sharing,
        life: Life,
        age: Option<std::time::Duration>,
    ) -> Option<Self> {
        (sharing == Sharing::Store && life.stores()).then(|| Keep {
            entry: entry.clone().kept(SystemTime::now(), age, life),
            ttl: life.kept(),
        })
    }
}

/// Whether the answer with this head may be shared and stored, for how
/// long, and its age on arrival: decided by its `Cache-Control` and
/// `Expires` — or by the first targeted field the configuration names that
/// it carries (RFC 9213), which then stands for both. `None` if the
/// deciding field cannot be read.
pub(super) fn decide(
    config: &crate::CoalesceConfig,
    head: &http::response::Parts,
    requested: SystemTime,
    received: SystemTime,
) -> Option<(Sharing, Life, Option<Duration>)> {
    let targeted = crate::targeted::cache_control(&head.headers, &config.targeted);
    let control = targeted.as_ref().unwrap_or(&head.headers);
    let expires = targeted.is_none();
    let directives = policy::directives(control).ok()?;
    let sharing = policy::judge(head, &directives, (config.store_server_errors, expires));
    let (life, age) = keep_for(config, head, (&directives, expires), requested, received);
    Some((sharing, life, age))
}

/// How long the answer with this head is fresh (zero: not stored at all)
/// and may then be served stale, and its age on arrival if the origin's
/// freshness decides.
fn keep_for(
    config: &crate::CoalesceConfig,
    head: &http::response::Parts,
    (directives, expires): (&[policy::Directive<'_>], bool),
    requested: SystemTime,
    received: SystemTime,
) -> (Life, Option<std::time::Duration>) {
    let took = received.duration_since(requested).unwrap_or_default();
    // Answers with validators are kept past their windows, to revalidate.
    let validators =
        head.headers.contains_key(header::ETAG) || head.headers.contains_key(header::LAST_MODIFIED);
    let retain = if validators {
        config.revalidation_retention
    } else {
        Duration::ZERO
    };
    // `no-cache` (with field names or without: both are read as
    // unqualified): stored only to be revalidated at every use.
    if directives.iter().any(|d| d.is("no-cache")) {
        let life = Life {
            retain,
            took,
            ..Life::NONE
        };
        let age = match &config.freshness {
            Freshness::Fixed(_) => None,
            Freshness::Origin(settings) => Some(
                crate::freshness::remaining(
                    settings,
                    head,
                    (directives, expires),
                    requested,
                    received,
                )
                .1,
            ),
        };
        return (life, age);
    }
    match &config.freshness {
        Freshness::Fixed(ttl) => {
            let windows = if crate::freshness::forbids_stale(directives) {
                (Duration::ZERO, Duration::ZERO)
            } else {
                (config.stale_while_revalidate, config.stale_if_error)
            };
            let life = Life {
                fresh: *ttl,
                stale: windows.0,
                if_error: windows.1,
                took,
                retain: if ttl.is_zero() {
                    Duration::ZERO
                } else {
                    retain
                },
            };
            (life, None)
        }
        Freshness::Origin(settings) => {
            let (fresh, age) = crate::freshness::remaining(
                settings,
                head,
                (directives, expires),
                requested,
                received,
            );
            let life = Life {
                fresh,
                stale: crate::freshness::stale_window(settings, directives),
                if_error: crate::freshness::error_window(settings, directives),
                took,
                retain,
            };
            (life, Some(age))
        }
    }
}

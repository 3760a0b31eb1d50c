//! How a flight ends in the backend: what it keeps is stored, its lease
//! completed with how it landed, and a stored answer it replaces but may
//! not stand for purged.

use crate::backend::LeaseToken;
use crate::backend::{Completed, Completion};
use crate::backend_call::{optional, Op};
use crate::flight::Landing;
use crate::origin::Keep;
use crate::remote::Held;
use crate::shared::Shared;
use crate::stats::bump;
use crate::Key;

/// What a flight holds of the backend until it ends.
#[derive(Default)]
pub(super) struct Tail {
    /// The lease it holds.
    pub(super) lease: Option<LeaseToken>,
    /// A lease attempt that failed but may have run: its token.
    pub(super) unsure: Option<LeaseToken>,
    /// Releases the lease if the flight is dropped.
    pub(super) held: Option<Held>,
    /// The stored answer the flight replaces, if any.
    pub(super) version: Option<std::time::SystemTime>,
}

/// Drops what a flight would keep if a purge landed during its fill (its
/// answer was made from data read before it), or if its key is
/// [flight-only](Key::flight_only).
pub(super) fn fence<E>(shared: &Shared<E>, key: &Key, keep: &mut Option<Keep>) {
    if key.is_flight_only() {
        *keep = None;
        return;
    }
    if keep
        .as_ref()
        .is_some_and(|k| shared.config.backend.purged(key, &k.entry).is_some())
    {
        // Its callers have it, the store does not.
        tracing::debug!("purged during the fill; not stored");
        bump(&shared.counters.purge_fenced);
        *keep = None;
    }
}

/// Ends a flight in the backend: stores what it keeps, ends its lease with
/// how it landed (waking the other instances' waiters), and drops a stored
/// answer it replaces but may not stand for.
pub(super) async fn end<E>(
    shared: &Shared<E>,
    key: &Key,
    tail: Tail,
    keep: Option<Keep>,
    landing: &Landing,
    lost: bool,
) {
    let config = &shared.config;
    let counters = &shared.counters;
    let Tail {
        lease,
        unsure,
        held,
        version,
    } = tail;
    if matches!(landing, Landing::Pass) {
        shared.remember_pass(key);
    }
    // An answer is stored under the key of the variant it was made for
    // (the primary key, if it varies on nothing): when that is not the key
    // this flight leased — it led for the primary key and the answer
    // varies, or the answers vary on other headers than the index said —
    // it is stored apart, and the lease is released, so that other
    // instances waiting on it look again and find the variant.
    let under = match varied(landing) {
        Some(varied) => varied.key(&key.primary()),
        None => key.primary(),
    };
    let (keep, apart) = match keep {
        Some(keep) if under != *key => (None, Some((under.clone(), keep))),
        keep => (keep, None),
    };
    if let Some((under, keep)) = &apart {
        store_unleased(shared, under, Some(keep.clone())).await;
    }
    // The answer replaces a stored one but may not be stored itself: the
    // stored one goes, from every instance's near cache too.
    let drops = version.is_some()
        && keep.is_none()
        && apart.is_none()
        && matches!(
            landing,
            Landing::Pass | Landing::Varied(..) | Landing::Streaming(_)
        );
    match (lease, unsure) {
        (Some(lease), _) => {
            let completion = match &apart {
                Some(_) => Completion::Released,
                None => completion(keep, landing, config, under == *key),
            };
            crate::remote::complete(shared, key, &lease, completion, lost).await;
            if let Some(held) = held {
                held.disarm();
            }
        }
        (None, Some(token)) => {
            // Kept aside: stored without the lease if it was not this
            // flight's.
            let stored = keep.clone();
            let completion = match &apart {
                Some(_) => Completion::Released,
                None => completion(keep, landing, config, under == *key),
            };
            match optional(shared, Op::Complete, |b| {
                b.complete(key, &token, completion)
            })
            .await
            {
                Ok(completed @ (Completed::Done | Completed::NotStored)) => {
                    tracing::debug!(
                        "the lease whose reply was lost was this flight's; ended with its answer"
                    );
                    if stored.is_some() && completed == Completed::Done {
                        bump(&counters.stored);
                    }
                }
                // Not its lease: stored as by a flight without one.
                Ok(Completed::Lost) => store_unleased(shared, key, stored).await,
                // If it was its lease, the lease ends by itself.
                Err(unavailable) => unavailable.report(
                    counters,
                    "completing a lease that may be this flight's",
                    "the answer is shared but not kept",
                ),
            }
        }
        (None, None) => store_unleased(shared, key, keep).await,
    }
    if drops {
        let purge = crate::Purge::Key(key.clone());
        match optional(shared, Op::Purge, |backend| backend.purge(&purge)).await {
            Ok(purged) => tracing::debug!(
                position = purged.position,
                "the answer that replaced a stored one may not be shared; the stored one is purged"
            ),
            Err(unavailable) => unavailable.report(
                counters,
                "backend purge",
                "other instances may serve the replaced answer until its stale window ends",
            ),
        }
    }
}

/// The variant a landing's answer was made for, if it varies.
fn varied(landing: &Landing) -> Option<&crate::flight::Varied> {
    match landing {
        Landing::Varied(_, varied) => Some(varied),
        Landing::Streaming(streamed) => streamed.varied.as_deref(),
        _ => None,
    }
}

/// How a leased flight ends, from what it keeps and how it landed.
/// `leased_variant`: the answer was made for the variant the lease is on
/// (waiting instances' callers select it too).
fn completion(
    keep: Option<Keep>,
    landing: &Landing,
    config: &crate::CoalesceConfig,
    leased_variant: bool,
) -> Completion {
    match (keep, landing) {
        (Some(Keep { entry, ttl }), _) => Completion::Stored { entry, ttl },
        (None, Landing::Done(entry) | Landing::Rescued(entry, _)) => {
            Completion::Shared(entry.clone())
        }
        (None, Landing::Varied(entry, _)) if leased_variant => Completion::Shared(entry.clone()),
        // The leader's values of headers outside the key decided it: other
        // instances' callers may differ in them.
        (None, Landing::Varied(..)) => Completion::Pass {
            ttl: std::time::Duration::ZERO,
        },
        (None, Landing::Pass) => Completion::Pass {
            ttl: config.pass_ttl,
        },
        // Too large to keep whole: the other instances' callers call the
        // origin themselves this once (the key does not become pass).
        (None, Landing::Streaming(_)) => Completion::Pass {
            ttl: std::time::Duration::ZERO,
        },
        (None, Landing::Failed(_)) => Completion::Released,
    }
}

/// Stores what a flight without a lease keeps, if anything.
async fn store_unleased<E>(shared: &Shared<E>, key: &Key, keep: Option<Keep>) {
    let Some(Keep { entry, ttl }) = keep else {
        return;
    };
    match optional(shared, Op::Store, |backend| backend.store(key, entry, ttl)).await {
        Ok(()) => bump(&shared.counters.stored),
        Err(unavailable) => unavailable.report(
            &shared.counters,
            "backend store",
            "the answer is shared but not kept",
        ),
    }
}

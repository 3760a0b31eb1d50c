//! How a flight's landing is judged, and its waiting callers' answers
//! marked: the origin's failure and the stale answer standing in for it,
//! and the outcome of a caller that waited (`Follower`, or `Stale`).

use crate::conditions::Asked;
use crate::flight::Landing;
use crate::shared::Shared;
use crate::stats::{bump, Forwarded};
use crate::{Entry, Outcome};

/// Whether a landing is the origin failing: an error, a failed body, a
/// `5xx` (what a stale answer may stand in for).
pub(crate) fn failed(landing: &Landing) -> bool {
    match landing {
        Landing::Failed(_) => true,
        Landing::Done(entry) | Landing::Varied(entry, _) => entry.status().is_server_error(),
        Landing::Streaming(streamed) => streamed.head.status().is_server_error(),
        Landing::Pass | Landing::Rescued(..) => false,
    }
}

/// The status a failed landing came with, if the origin answered at all.
pub(crate) fn failed_status(landing: &Landing) -> Option<http::StatusCode> {
    match landing {
        Landing::Done(entry) | Landing::Varied(entry, _) => Some(entry.status()),
        Landing::Streaming(streamed) => Some(streamed.head.status()),
        _ => None,
    }
}

/// `stale` stands in for the origin's failure (stale-if-error), which came
/// with the status `failed`, if any: counted, and landed for the followers.
pub(crate) fn rescue<E>(
    shared: &Shared<E>,
    stale: &Entry,
    failed: Option<http::StatusCode>,
) -> Landing {
    bump(&shared.counters.stale_on_error);
    Landing::Rescued(stale.clone(), failed)
}

/// The leader's caller's answer when `stale` stands in for the origin's
/// failure: the stale answer, said so in `Cache-Status`.
pub(crate) fn rescued_answer<E, B>(
    shared: &Shared<E>,
    asked: &Asked,
    stale: &Entry,
    failed: Option<http::StatusCode>,
) -> http::Response<crate::CoalesceBody<B>> {
    let mut res = asked.answer(stale);
    let forwarded = Forwarded {
        rescued: Some(failed),
        ttl: stale.ttl_secs(),
        ..Forwarded::default()
    };
    forwarded.note(&mut res, shared.marks.as_deref());
    res
}

/// How a caller that waited on a flight gets its answer `entry`: `Stale`
/// (counted), with its ttl, when the answer is stale — it stood in for the
/// origin's failure, or is being refreshed — else `Follower`.
pub(crate) fn waited_for<E>(shared: &Shared<E>, entry: &Entry) -> (Outcome, Option<i64>) {
    if !entry.is_stale() {
        return (Outcome::Follower, None);
    }
    bump(&shared.counters.stale);
    (Outcome::Stale, entry.ttl_secs())
}

/// The answer another instance's flight brought this flight's caller,
/// marked as a local follower of that flight's answer would be.
pub(super) fn remote_answer<E, B>(
    shared: &Shared<E>,
    asked: &Asked,
    entry: &Entry,
) -> (http::Response<crate::CoalesceBody<B>>, Outcome) {
    let mut res = asked.answer(entry);
    let (outcome, ttl) = waited_for(shared, entry);
    if outcome == Outcome::Stale {
        let forwarded = Forwarded {
            ttl,
            ..Forwarded::default()
        };
        forwarded.note(&mut res, shared.marks.as_deref());
    }
    (res, outcome)
}

//! What a follower does with its flight's landing: takes its answer from
//! it (its own conditions applied), or goes again — to the flight of its
//! own variant, to a new flight when the answer was purged before it
//! joined or its flight was abandoned, or to the origin alone.

use super::again::{join, key_again, pass, rejoin, rejoin_as, rejoin_variant, selects};
use super::{start, State};
use crate::conditions::Asked;
use crate::flight::{Landing, Varied};
use crate::leader;
use crate::origin::{Origin, OriginBody};
use crate::shared::Shared;
use crate::stats::{bump, Forwarded, Fwd, Started};
use crate::{CoalesceBody, FlightErrorKind, KeyExtractor, Outcome, WaitFallback};
use http::{Request, Response};
use std::sync::Arc;

/// A follower whose flight landed: what of its `Coalesced` it needs.
pub(super) struct Follower<'a, S, E, ReqBody> {
    pub(super) shared: &'a Arc<Shared<E>>,
    pub(super) call: &'a mut Option<(Request<ReqBody>, S)>,
    pub(super) joined: &'a mut crate::PurgePosition,
    pub(super) refused: bool,
    pub(super) grpc: bool,
    pub(super) since: Started,
}

/// What comes of a landing for a follower.
pub(super) enum Next<B, Err> {
    /// Its answer, marked.
    Answer(Response<CoalesceBody<B>>),
    /// It goes on, in this state.
    Go(State<B, Err>),
}

/// The flight of `follower` landed as `landing` (`None`: abandoned);
/// `only`, the variant it was made for if it was made for one only.
pub(super) fn landed<S, E, ReqBody, ResBody>(
    follower: Follower<'_, S, E, ReqBody>,
    landing: Option<&Landing>,
    only: Option<&Varied>,
) -> Next<ResBody, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let Follower {
        shared,
        call,
        joined,
        refused,
        grpc,
        since,
    } = follower;
    let header = shared.marks.as_deref();
    let state = match landing {
        // The flight was made for another variant of the key's answers
        // than this request selects: it goes on for its own, with those
        // that select the same.
        Some(_) if only.is_some_and(|only| !selects(call, only)) => {
            let variants = only.map(Varied::variants);
            rejoin_variant(shared, call, variants)
        }
        // Asked with other values of a header the answer varies on.
        Some(Landing::Varied(_, varied)) if !selects(call, varied) => {
            rejoin_variant(shared, call, Some(varied.variants()))
        }
        Some(Landing::Done(entry) | Landing::Varied(entry, _) | Landing::Rescued(entry, _))
            if purged_before(shared, call, entry, *joined) =>
        {
            rerun(shared, call, joined, None)
        }
        // Asked with other values of a header the answer varies on.
        Some(Landing::Streaming(streamed))
            if streamed
                .varied
                .as_ref()
                .is_some_and(|varied| !selects(call, varied)) =>
        {
            let variants = streamed.varied.as_deref().map(Varied::variants);
            rejoin_variant(shared, call, variants)
        }
        Some(Landing::Streaming(streamed))
            if purged_before(shared, call, &streamed.head, *joined) =>
        {
            rerun(shared, call, joined, Some(streamed))
        }
        Some(Landing::Streaming(streamed)) => {
            let res = match streamed.whole.get() {
                // Whole by now: answered as any other answer.
                Some(entry) => Some(answer(call, entry)),
                None => match call {
                    Some((req, _)) => Asked::of(req).answer_tape(streamed),
                    None => Asked::default().answer_tape(streamed),
                },
            };
            match res {
                Some(res) => {
                    return Next::Answer(followed(shared, since, res, Outcome::Follower, None))
                }
                // Joined after the window dropped the answer's first
                // bytes: a new flight.
                None => rejoin(shared, call, false),
            }
        }
        Some(Landing::Rescued(entry, failed)) => {
            bump(&shared.counters.stale);
            let mut res = answer(call, entry);
            let forwarded = Forwarded {
                rescued: Some(*failed),
                collapsed: true,
                ..Forwarded::default()
            };
            forwarded.note(&mut res, header);
            let ttl = entry.ttl_secs();
            return Next::Answer(followed(shared, since, res, Outcome::Stale, ttl));
        }
        Some(Landing::Done(entry) | Landing::Varied(entry, _)) => {
            let (outcome, ttl) = crate::fly::waited_for(shared, entry);
            let mut res = answer(call, entry);
            if refused && outcome == Outcome::Follower {
                let forwarded = Forwarded {
                    why: Fwd::Request,
                    collapsed: true,
                    ..Forwarded::default()
                };
                forwarded.note(&mut res, header);
            }
            return Next::Answer(followed(shared, since, res, outcome, ttl));
        }
        Some(Landing::Failed(error))
            if error.kind() == FlightErrorKind::WaitTimeout
                && shared.config.wait_fallback == WaitFallback::CallOrigin =>
        {
            // Not each to the origin at the same instant: one of them
            // leads a new flight there, the others follow.
            rejoin(shared, call, true)
        }
        Some(Landing::Failed(error)) => {
            let res = error.clone().into_response(grpc);
            return Next::Answer(followed(shared, since, res, Outcome::Follower, None));
        }
        Some(Landing::Pass) => pass(shared, call),
        None => {
            bump(&shared.counters.dangling);
            let key = call.as_ref().and_then(|(req, _)| shared.key(req));
            match key {
                // The extractor no longer keys this request.
                None => pass(shared, call),
                Some(mut key) => {
                    let headers = match call.as_ref() {
                        Some((req, _)) => req.headers().clone(),
                        None => http::HeaderMap::new(),
                    };
                    let held = leader::local_hit(shared, &mut key, &headers)
                        .and_then(|entry| Some((entry.serve_as()?, entry)));
                    if let Some((outcome, entry)) = held {
                        // A stale one is refreshed by the next request
                        // that finds it.
                        let counter = match outcome {
                            Outcome::Stale => &shared.counters.stale,
                            _ => &shared.counters.hits,
                        };
                        bump(counter);
                        let res = answer(call, &entry);
                        let ttl = entry.ttl_secs();
                        return Next::Answer(followed(shared, since, res, outcome, ttl));
                    }
                    match join(shared, &key, call) {
                        Some(role) => start(shared, key, call, role),
                        None => pass(shared, call),
                    }
                }
            }
        }
    };
    Next::Go(state)
}

/// What a caller that joined a refresh gets while it runs: the answer the
/// refresh replaces (`refreshed`), while that may be served (fresh, or in
/// its stale-while-revalidate window) and the caller's own directives
/// accept it. It then lands as the flight's answer would (purges and
/// variants judged as for any landing).
pub(super) fn while_refreshed<'e, S, ReqBody>(
    call: &Option<(Request<ReqBody>, S)>,
    refreshed: Option<&'e crate::Entry>,
) -> Option<&'e crate::Entry> {
    let entry = refreshed?;
    entry.serve_as()?;
    let asks = call
        .as_ref()
        .and_then(|(req, _)| req.extensions().get::<crate::client::Asks>());
    asks.is_none_or(|asks| asks.accepts(entry)).then_some(entry)
}

/// A follower whose flight's answer was purged before it joined: a new
/// flight, as of the purges known now. A flight still streaming
/// (`streaming`) is in the table still: it is taken out first, or this
/// follower would join it again, and again.
fn rerun<S, E, ReqBody, ResBody>(
    shared: &Arc<Shared<E>>,
    call: &mut Option<(Request<ReqBody>, S)>,
    joined: &mut crate::PurgePosition,
    streaming: Option<&Arc<crate::flight::Streamed>>,
) -> State<ResBody, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    tracing::debug!("the flight's answer was purged before this request joined; flying again");
    bump(&shared.counters.purge_reruns);
    *joined = shared.config.backend.purge_position();
    let key = key_again(shared, call);
    if let (Some(streamed), Some(key)) = (streaming, &key) {
        shared.table.detach_stream(key, streamed);
    }
    rejoin_as(shared, call, key, false)
}

/// This follower's answer from the flight's entry: its own conditions,
/// range and method applied.
fn answer<S, ReqBody, ResBody>(
    call: &Option<(Request<ReqBody>, S)>,
    entry: &crate::Entry,
) -> Response<CoalesceBody<ResBody>> {
    match call {
        Some((req, _)) => Asked::of(req).answer(entry),
        None => entry.to_response(),
    }
}

/// A follower's answer, marked: counted by outcome, and how long it
/// waited since it joined at `since`.
fn followed<E, B>(
    shared: &Shared<E>,
    since: Started,
    res: Response<B>,
    outcome: Outcome,
    ttl: Option<i64>,
) -> Response<B> {
    shared.meter.follower_wait(since);
    shared.mark(res, outcome, ttl)
}

/// Whether `entry`, a flight's answer, was purged by a purge this follower
/// knew of when it joined (one after that, it was already waiting: it gets
/// the answer). Costs a load unless a purge came after the fill began.
fn purged_before<S, E, ReqBody>(
    shared: &Shared<E>,
    call: &Option<(Request<ReqBody>, S)>,
    entry: &crate::Entry,
    joined: crate::PurgePosition,
) -> bool
where
    E: KeyExtractor<ReqBody>,
{
    let backend = &shared.config.backend;
    if backend.purge_position() <= entry.fill_position() {
        return false;
    }
    let Some(key) = call.as_ref().and_then(|(req, _)| shared.key(req)) else {
        return false;
    };
    backend
        .purged(&key, entry)
        .is_some_and(|position| position <= joined)
}

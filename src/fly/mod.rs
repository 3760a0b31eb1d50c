//! The work of one flight, wherever it runs (a caller's flight task, or a
//! detached refresh): look in the backend, take the lease or wait for
//! another process's answer, call the origin, store, and say how it ended.
//! How its answer streams on while the body arrives is `streaming`; how it
//! ends in the backend (store, complete, purge what it replaces), `end`;
//! how its landing is judged and its waiting callers' answers marked,
//! `answered`.

mod answered;
mod end;
mod streaming;

use crate::backend_call::{optional, Op};
use crate::conditions::Asked;
use crate::error::is_grpc;
use crate::flight::Landing;
use crate::origin::{produce, Made, Origin, OriginBody, Own, Produced};
use crate::remote::{Elected, Held};
use crate::shared::Shared;
use crate::stats::{bump, Forwarded, Fwd};
use crate::{Entry, FlightError, FlightErrorKind, Found, Key, KeyExtractor, Outcome, WaitFallback};
use answered::remote_answer;
pub(crate) use answered::{failed, failed_status, rescue, rescued_answer, waited_for};
use end::{end, fence, Tail};
use http::Request;
use streaming::Source;
pub(crate) use streaming::Streaming;

/// How a flight's work ended.
pub(crate) enum Flown<S, ReqBody, B, E> {
    /// Land this for the followers; answer the leader's caller with that.
    Landed(Landing, Own<B, E>),
    /// The answer's head is here and its body arriving: land
    /// [`Streaming::landing`] for the followers, answer the leader's caller
    /// with that, then [`finish`](Streaming::finish).
    Streaming(Box<Streaming<B>>, Own<B, E>),
    /// The backend holds a stale answer that may be served while it is
    /// refreshed: land it, then refresh it (under this key: the flight's,
    /// or the variant's it selected) with this request and service.
    Stale(Entry, Key, Request<ReqBody>, S),
    /// The key's answers cannot be shared: the followers go to the origin
    /// themselves, and so does the leader's caller, with this request (as
    /// it sent it) and service.
    Pass(Request<ReqBody>, S),
}

/// What a flight's work is to do besides answering.
pub(crate) struct Brief<'a> {
    /// The flight's deadline.
    pub(crate) deadline: tokio::time::Instant,
    /// For a refresh, the stale answer it replaces.
    pub(crate) refresh: Option<Entry>,
    /// Where the work leaves a stale answer it found that may stand in for
    /// an error, for the flight's timer.
    pub(crate) fallback: &'a std::sync::OnceLock<Entry>,
    /// The flight replaces one that timed out waiting (`CallOrigin`): it
    /// goes to the origin without waiting on a lease.
    pub(crate) overdue: bool,
    /// Where the work marks its flight as made for one variant of its
    /// key's answers only, when it finds them varying (see
    /// [`FlightGuard::only`](crate::flight::FlightGuard::only)).
    pub(crate) only: &'a std::sync::OnceLock<crate::flight::Varied>,
}

/// The flight itself: backend, origin, body, policy, store.
pub(crate) async fn fly<S, E, ReqBody, ResBody>(
    shared: &Shared<E>,
    flight_key: &Key,
    asked: &Asked,
    mut req: Request<ReqBody>,
    inner: S,
    brief: Brief<'_>,
) -> Flown<S, ReqBody, ResBody, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let config = &shared.config;
    let counters = &shared.counters;
    let Brief {
        deadline,
        mut refresh,
        fallback: found,
        overdue,
        only,
    } = brief;
    // The key the work looks up, leases and stores under: the flight's, or
    // once its answers are found to vary, the variant's this request
    // selects.
    let mut key = flight_key.clone();
    let mut version = refresh.as_ref().and_then(Entry::stored_at);
    // What the leader's caller asked of the cache (`no-cache`, `max-age`):
    // a stored answer it may not have is revalidated with the origin, as a
    // refresh would, for the flight's callers.
    let asks = req.extensions().get::<crate::client::Asks>().cloned();
    let backend = &config.backend;
    // Where the purge order stands before anything is read: a purge after
    // this drops the answer this flight makes.
    let filled = backend.purge_position();
    // Why this flight goes to the origin, for `Cache-Status`.
    let mut why = Fwd::Miss;
    // A lease attempt that failed but may have run: its token.
    let mut unsure = None;
    // Once more when the key's answers turn out to vary: for the
    // variant's key.
    let lease = loop {
        // A flight-only key has nothing stored to find.
        if config.stores() && !key.is_flight_only() {
            let mut looked = optional(shared, Op::Find, |backend| backend.find(&key)).await;
            if let Ok(Some(Found::Variants(variants))) = &looked {
                select(&mut key, only, variants, req.headers());
                looked = optional(shared, Op::Find, |backend| backend.find(&key)).await;
            }
            match looked.map(|looked| looked.and_then(Found::into_entry)) {
                // A refresh looks past the stale answer it replaces.
                Ok(Some(entry)) if refresh.is_some() && entry.stored_at() == version => {}
                // Purged: replaced as if it were not there (not revalidated,
                // and never served, not even for an error).
                Ok(Some(entry)) if backend.purged(&key, &entry).is_some() => {
                    version = entry.stored_at();
                }
                Ok(Some(entry)) if asks.as_ref().is_some_and(|a| !a.accepts(&entry)) => {
                    version = entry.stored_at();
                    refresh = Some(entry);
                    why = Fwd::Request;
                }
                Ok(Some(entry)) if refresh.is_none() && entry.is_stale() => {
                    if entry.may_serve_stale() {
                        return Flown::Stale(entry, key, req, inner);
                    }
                    // Past its stale-while-revalidate window: replaced (the
                    // lease is asked for as a refresh of it, or a backend that
                    // refuses leases while an answer is stored would make this
                    // flight wait on it and take it for the answer), and kept to
                    // stand in for an error (a refresh does that with its own
                    // stale answer).
                    // With validators, the origin is asked whether it changed
                    // (RFC 9111 §4.3): a `304` renews it for every caller.
                    version = entry.stored_at();
                    if crate::revalidate::has_validators(&entry) {
                        refresh = Some(entry.clone());
                    }
                    let _ = found.set(entry);
                    why = Fwd::Stale;
                }
                Ok(Some(entry)) => {
                    bump(&counters.hits);
                    let res = asked.answer(&entry);
                    return Flown::Landed(Landing::Done(entry), Ok((res, Outcome::Hit)));
                }
                Ok(None) => {}
                Err(unavailable) => {
                    unavailable.report(counters, "backend lookup", "calling the origin")
                }
            }
        }

        break if !config.stores() && !backend.shares_leases() {
            // Nothing is stored, and no other process shares the leases:
            // the flight table has coalesced this process's callers.
            None
        } else if overdue {
            // Waited out once already: the answer is stored and announced when
            // it comes, without a lease.
            None
        } else {
            match crate::remote::elect(shared, &key, deadline, &mut version).await {
                Elected::Lead(lease) => lease,
                // The key's answers turned out to vary while this flight
                // waited: it goes on for the variant its request selects.
                Elected::Varies(variants) if key.variants().is_none() => {
                    select(&mut key, only, &variants, req.headers());
                    continue;
                }
                Elected::Varies(_) => None,
                Elected::Unsure(token) => {
                    unsure = Some(token);
                    None
                }
                Elected::Streaming(watch, read) => {
                    if let Some(follow) = crate::remote_stream::Follow::new(watch, read) {
                        // The flight's request and a clone of its service,
                        // kept to ask the origin for the rest should the
                        // leading instance stop mid-body. A clone, readied
                        // only then: the readied service may hold a slot of
                        // a concurrency limit, for as long as the stream.
                        let resume = crate::remote_stream::Resume::new(req, inner.clone());
                        let follow = follow.resuming(resume);
                        let own = asked
                            .answer_tape(follow.streamed())
                            .expect("a new tape starts at its first byte");
                        let streaming = Streaming {
                            source: Source::Remote(follow),
                            tail: Tail::default(),
                            key,
                        };
                        return Flown::Streaming(Box::new(streaming), Ok((own, Outcome::Follower)));
                    }
                    // A head this process cannot follow: the origin, once.
                    None
                }
                Elected::Answer(entry) | Elected::Shared(entry) => {
                    let (res, outcome) = remote_answer(shared, asked, &entry);
                    return Flown::Landed(Landing::Done(entry), Ok((res, outcome)));
                }
                Elected::Pass { remember } => {
                    tracing::debug!(
                        "another instance found the answer unshareable; calling the origin"
                    );
                    if remember {
                        shared.remember_pass(&key);
                    }
                    bump(&counters.passes);
                    bump(&counters.origin_calls);
                    asked.restore(&mut req);
                    req.extensions_mut().insert(Outcome::Pass);
                    return Flown::Pass(req, inner);
                }
                Elected::Timeout => match config.wait_fallback {
                    WaitFallback::CallOrigin => None,
                    WaitFallback::GatewayTimeout => {
                        bump(&counters.wait_timeouts);
                        let error = FlightError::new(
                            FlightErrorKind::WaitTimeout,
                            format!(
                                "no answer from another instance within {:?}",
                                config.wait_timeout
                            ),
                        );
                        let own = Ok((error.clone().into_response(is_grpc(&req)), Outcome::Leader));
                        return Flown::Landed(Landing::Failed(error), own);
                    }
                },
            }
        };
    };

    let held = lease.as_ref().map(|token| Held::new(shared, &key, token));
    // A stale answer that may stand in for a failure: no head goes out
    // before the body is known to be whole.
    let stand_in = found
        .get()
        .or(refresh.as_ref())
        .is_some_and(Entry::may_serve_on_error);
    let produced = produce(
        shared,
        asked,
        req,
        inner,
        (refresh.as_ref(), stand_in),
        filled,
    );
    let (made, lost) = match &lease {
        Some(lease) => crate::remote::with_watchdog(shared, &key, lease, produced).await,
        None => (produced.await, false),
    };
    let tail = Tail {
        lease,
        unsure,
        held,
        version,
    };
    let Produced {
        landing,
        mut own,
        mut keep,
    } = match made {
        Made::Whole(produced) => produced,
        Made::Streaming(pump, mut own) => {
            if let Ok((res, _)) = &mut own {
                let forwarded = Forwarded {
                    why,
                    ..Forwarded::default()
                };
                forwarded.note(res, shared.marks.as_deref());
            }
            let streaming = Streaming {
                source: Source::Origin(pump),
                tail,
                key,
            };
            return Flown::Streaming(Box::new(streaming), own);
        }
    };
    fence(shared, &key, &mut keep);
    if stand_in && failed(&landing) {
        // A server error stored by choice never replaces an answer that
        // may stand in for it (here, or in the refresh that holds one).
        keep = None;
    }
    if let Ok((res, Outcome::Leader)) = &mut own {
        let forwarded = Forwarded {
            why,
            stored: keep.is_some(),
            ..Forwarded::default()
        };
        forwarded.note(res, shared.marks.as_deref());
    }
    let (landing, own) = match found
        .get()
        .filter(|stale| failed(&landing) && stale.may_serve_on_error())
    {
        Some(stale) => {
            tracing::debug!("the origin failed; its callers get the stale answer");
            let status = failed_status(&landing);
            let own = rescued_answer(shared, asked, stale, status);
            (rescue(shared, stale, status), Ok((own, Outcome::Stale)))
        }
        None => (landing, own),
    };
    end(shared, &key, tail, keep, &landing, lost).await;
    Flown::Landed(landing, own)
}

/// Makes `key`, a primary key whose answers vary on `variants`, the key of
/// the variant that a request with `headers` selects, and marks the flight
/// as made for that variant only.
fn select(
    key: &mut Key,
    only: &std::sync::OnceLock<crate::flight::Varied>,
    variants: &crate::Variants,
    headers: &http::HeaderMap,
) {
    if key.variants().is_some() {
        return;
    }
    let varied = crate::flight::Varied::of(variants.clone(), headers);
    *key = varied.key(key);
    let _ = only.set(varied);
}

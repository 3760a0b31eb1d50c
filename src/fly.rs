//! The work of one flight, wherever it runs (a caller's flight task, or a
//! detached refresh): look in the backend, take the lease or wait for
//! another process's answer, call the origin, store, and say how it ended.

use crate::backend::Completion;
use crate::backend::LeaseToken;
use crate::backend_call::optional;
use crate::conditions::Asked;
use crate::error::is_grpc;
use crate::flight::Landing;
use crate::origin::{produce, Keep, Made, Origin, OriginBody, Own, Produced, Pump};
use crate::remote::{Elected, Held};
use crate::shared::Shared;
use crate::stats::{bump, Forwarded, Fwd};
use crate::{Entry, FlightError, FlightErrorKind, Found, Key, KeyExtractor, Outcome, WaitFallback};
use http::Request;

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
        if config.stores() {
            let mut looked = optional(shared, |backend| backend.find(&key)).await;
            if let Ok(Some(Found::Variants(variants))) = &looked {
                select(&mut key, only, variants, req.headers());
                looked = optional(shared, |backend| backend.find(&key)).await;
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

        break if !config.stores() {
            // Nothing is stored, so nothing could be handed to another process.
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
                    let res = asked.answer(&entry);
                    return Flown::Landed(Landing::Done(entry), Ok((res, Outcome::Follower)));
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

/// A flight whose answer's body is arriving, with what it holds until the
/// body ends: the pump that reads it, and the lease to end.
pub(crate) struct Streaming<B> {
    source: Source<B>,
    tail: Tail,
    /// The key it leases and stores under.
    key: Key,
}

/// Where a streaming answer's body comes from.
enum Source<B> {
    /// The origin, read by this flight.
    Origin(Pump<B>),
    /// Another instance's flight, through the backend.
    Remote(crate::remote_stream::Follow),
}

impl<B: OriginBody> Streaming<B> {
    /// The landing that gives the followers the answer as it arrives.
    pub(crate) fn landing(&self) -> Landing {
        let streamed = match &self.source {
            Source::Origin(pump) => &pump.streamed,
            Source::Remote(follow) => follow.streamed(),
        };
        Landing::Streaming(streamed.clone())
    }

    /// Reads the body to its end (renewing the lease, and publishing the
    /// body to the other instances, meanwhile), stores the answer if it may
    /// be kept, and ends the lease; returns how the flight ended. `close`
    /// takes the flight out of the table (see [`Pump::run`]).
    pub(crate) async fn finish<E>(self, shared: &Shared<E>, close: impl Fn()) -> Landing {
        let Streaming { source, tail, key } = self;
        let key = &key;
        let pump = match source {
            Source::Origin(pump) => pump,
            // The other instance stores it and ends its lease.
            Source::Remote(follow) => return follow.run(shared, key, close).await,
        };
        // Waiters in other instances exist only behind a lease; an answer
        // made for another variant than the one leased is not handed to
        // them.
        let variant = match &pump.streamed.varied {
            Some(varied) => varied.key(&key.primary()) == *key,
            None => key.variants().is_none(),
        };
        let publisher = tail
            .lease
            .clone()
            .filter(|_| variant)
            .map(|token| crate::remote_stream::Publisher::new(key.clone(), token));
        let pumped = pump.run(shared, close, publisher);
        let ((landing, mut keep), lost) = match &tail.lease {
            Some(lease) => crate::remote::with_watchdog(shared, key, lease, pumped).await,
            None => (pumped.await, false),
        };
        fence(shared, key, &mut keep);
        end(shared, key, tail, keep, &landing, lost).await;
        landing
    }
}

/// What a flight holds of the backend until it ends.
#[derive(Default)]
struct Tail {
    /// The lease it holds.
    lease: Option<LeaseToken>,
    /// A lease attempt that failed but may have run: its token.
    unsure: Option<LeaseToken>,
    /// Releases the lease if the flight is dropped.
    held: Option<Held>,
    /// The stored answer the flight replaces, if any.
    version: Option<std::time::SystemTime>,
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

/// Drops what a flight would keep if a purge landed during its fill: its
/// answer was made from data read before it.
fn fence<E>(shared: &Shared<E>, key: &Key, keep: &mut Option<Keep>) {
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
async fn end<E>(
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
            match optional(shared, |b| b.complete(key, &token, completion)).await {
                Ok(true) => {
                    tracing::debug!(
                        "the lease whose reply was lost was this flight's; ended with its answer"
                    );
                    if stored.is_some() {
                        bump(&counters.stored);
                    }
                }
                // Not its lease: stored as by a flight without one.
                Ok(false) => store_unleased(shared, key, stored).await,
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
        match optional(shared, |backend| backend.purge(&purge)).await {
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
    match optional(shared, |backend| backend.store(key, entry, ttl)).await {
        Ok(()) => bump(&shared.counters.stored),
        Err(unavailable) => unavailable.report(
            &shared.counters,
            "backend store",
            "the answer is shared but not kept",
        ),
    }
}

//! A keyed request after a miss: it leads a flight (its task runs in
//! `leader`; this waits for the caller's own answer), follows one, or calls
//! the inner service alone — for a pass-through answer, a `Vary` it does
//! not match, or a wait timeout with the `CallOrigin` fallback.
//!
//! A follower never touches the backend: it waits for the flight's landing,
//! woken by it, never polling. A flight that was abandoned sends it back to the
//! table, where it leads or follows again.

use crate::conditions::Asked;
use crate::flight::{Landing, Role, Wait};
use crate::leader;
use crate::origin::{Origin, OriginBody, Own};
use crate::shared::Shared;
use crate::stats::bump;
use crate::stats::{mark, Forwarded, Fwd};
use crate::{CoalesceBody, FlightError, FlightErrorKind, Key, KeyExtractor, Outcome, WaitFallback};
use futures_util::future::BoxFuture;
use http::{Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::sync::oneshot;
use tower_service::Service;

mod again;
use again::{join, pass, rejoin, rejoin_variant, selects};

pin_project! {
    /// A keyed request's future after a miss: it leads a flight (its task runs
    /// elsewhere; this waits for the caller's own answer), follows one, or
    /// calls the inner service alone when the flight's answer cannot be shared.
    ///
    /// Written by hand rather than as an `async fn`: a million followers each
    /// hold one of these, and an `async fn` keeps its arguments twice (as
    /// captures and as locals), which more than doubled its size.
    ///
    /// It keeps no key: only a follower whose flight was abandoned needs one
    /// again, and it extracts it anew from the request it keeps. A follower
    /// thus holds nothing per request beyond the request itself.
    pub(crate) struct Coalesced<S, E, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
    {
        shared: Arc<Shared<E>>,
        // Failures are answered in gRPC's terms to gRPC callers.
        grpc: bool,
        // The caller's own directives refused an answer this process held
        // (`Cache-Status: fwd=request`).
        refused: bool,
        // The purge position when it joined: an answer purged by a purge
        // up to it was made from data it must not get.
        joined: crate::PurgePosition,
        // The request and a clone of the inner service, until a flight or a
        // pass takes them.
        call: Option<(Request<ReqBody>, S)>,
        #[pin]
        state: State<ResBody, S::Error>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B, Err> {
        Leading { own: oneshot::Receiver<Own<B, Err>> },
        Following { #[pin] wait: Wait },
        // Boxed: rare, and the inner future may be large.
        Passing { future: BoxFuture<'static, Result<Response<CoalesceBody<B>>, Err>> },
        Done,
    }
}

impl<S, E, ReqBody, ResBody> Coalesced<S, E, ReqBody, ResBody>
where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    /// Starts as `role`: a leader's flight task is spawned here. `refused`:
    /// the caller's directives refused an answer this process held.
    pub(crate) fn new(
        shared: Arc<Shared<E>>,
        key: Key,
        role: Role,
        req: Request<ReqBody>,
        inner: S,
        refused: bool,
    ) -> Self {
        let grpc = crate::error::is_grpc(&req);
        let joined = shared.config.backend.purge_position();
        let mut call = Some((req, inner));
        let state = start(&shared, key, &mut call, role);
        Self {
            shared,
            grpc,
            refused,
            joined,
            call,
            state,
        }
    }
}

fn start<S, E, ReqBody, ResBody>(
    shared: &Arc<Shared<E>>,
    key: Key,
    call: &mut Option<(Request<ReqBody>, S)>,
    role: Role,
) -> State<ResBody, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    match role {
        Role::Leader(guard) => {
            let (req, inner) = call.take().expect("a request leads only once");
            let own = leader::spawn(shared.clone(), guard, key, req, inner);
            State::Leading { own }
        }
        Role::Follower(receiver) => {
            tracing::trace!(key = %key.fingerprint(), "following a flight");
            bump(&shared.counters.followers);
            State::Following {
                wait: receiver.wait(),
            }
        }
    }
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

impl<S, E, ReqBody, ResBody> Future for Coalesced<S, E, ReqBody, ResBody>
where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    type Output = Result<Response<CoalesceBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let header = this.shared.marks.as_deref();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Leading { own } => {
                    let own = ready!(Pin::new(own).poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(match own {
                        Ok(own) => own.map(|(res, outcome)| mark(res, outcome, header, None)),
                        // The task ended without answering: only when the
                        // runtime shuts down.
                        Err(_) => Ok(mark(
                            FlightError::new(
                                FlightErrorKind::Dropped,
                                "the flight's task was stopped",
                            )
                            .into_response(*this.grpc),
                            Outcome::Leader,
                            header,
                            None,
                        )),
                    });
                }
                StateProj::Passing { future } => {
                    let res = ready!(future.as_mut().poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(res.map(|res| mark(res, Outcome::Pass, header, None)));
                }
                StateProj::Done => panic!("Coalesced polled after completion"),
                StateProj::Following { mut wait } => match ready!(wait.as_mut().poll(cx)) {
                    // The flight was made for another variant of the key's
                    // answers than this request selects: it goes on for its
                    // own, with those that select the same.
                    Some(_)
                        if wait
                            .as_ref()
                            .get_ref()
                            .only()
                            .is_some_and(|only| !selects(this.call, only)) =>
                    {
                        let only = wait.as_ref().get_ref().only().cloned();
                        let variants = only.as_ref().map(crate::flight::Varied::variants);
                        rejoin_variant(this.shared, this.call, variants)
                    }
                    // Asked with other values of a header the answer varies on.
                    Some(Landing::Varied(_, varied)) if !selects(this.call, &varied) => {
                        rejoin_variant(this.shared, this.call, Some(varied.variants()))
                    }
                    Some(
                        Landing::Done(entry)
                        | Landing::Varied(entry, _)
                        | Landing::Rescued(entry, _),
                    ) if purged_before(this.shared, this.call, &entry, *this.joined) => {
                        tracing::debug!("the flight's answer was purged before this request joined; flying again");
                        bump(&this.shared.counters.purge_reruns);
                        this.state.set(State::Done);
                        *this.joined = this.shared.config.backend.purge_position();
                        rejoin(this.shared, this.call, false)
                    }
                    // Asked with other values of a header the answer varies on.
                    Some(Landing::Streaming(streamed))
                        if streamed
                            .varied
                            .as_ref()
                            .is_some_and(|varied| !selects(this.call, varied)) =>
                    {
                        let variants = streamed
                            .varied
                            .as_deref()
                            .map(crate::flight::Varied::variants);
                        rejoin_variant(this.shared, this.call, variants)
                    }
                    Some(Landing::Streaming(streamed))
                        if purged_before(this.shared, this.call, &streamed.head, *this.joined) =>
                    {
                        tracing::debug!("the flight's answer was purged before this request joined; flying again");
                        bump(&this.shared.counters.purge_reruns);
                        this.state.set(State::Done);
                        *this.joined = this.shared.config.backend.purge_position();
                        rejoin(this.shared, this.call, false)
                    }
                    Some(Landing::Streaming(streamed)) => {
                        let res = match streamed.whole.get() {
                            // Whole by now: answered as any other answer.
                            Some(entry) => Some(answer(this.call, entry)),
                            None => match this.call {
                                Some((req, _)) => Asked::of(req).answer_tape(&streamed),
                                None => Asked::default().answer_tape(&streamed),
                            },
                        };
                        match res {
                            Some(res) => {
                                this.state.set(State::Done);
                                return Poll::Ready(Ok(mark(res, Outcome::Follower, header, None)));
                            }
                            // Joined after the window dropped the answer's
                            // first bytes: a new flight.
                            None => {
                                this.state.set(State::Done);
                                rejoin(this.shared, this.call, false)
                            }
                        }
                    }
                    Some(Landing::Rescued(entry, failed)) => {
                        this.state.set(State::Done);
                        bump(&this.shared.counters.stale);
                        let mut res = answer(this.call, &entry);
                        let forwarded = Forwarded {
                            rescued: Some(failed),
                            collapsed: true,
                            ..Forwarded::default()
                        };
                        forwarded.note(&mut res, header);
                        return Poll::Ready(Ok(mark(
                            res,
                            Outcome::Stale,
                            header,
                            entry.ttl_secs(),
                        )));
                    }
                    Some(Landing::Done(entry) | Landing::Varied(entry, _)) => {
                        this.state.set(State::Done);
                        // The flight found a stale answer, and is refreshing it.
                        let outcome = if entry.is_stale() {
                            bump(&this.shared.counters.stale);
                            Outcome::Stale
                        } else {
                            Outcome::Follower
                        };
                        let ttl = (outcome == Outcome::Stale)
                            .then(|| entry.ttl_secs())
                            .flatten();
                        let mut res = answer(this.call, &entry);
                        if *this.refused && outcome == Outcome::Follower {
                            let forwarded = Forwarded {
                                why: Fwd::Request,
                                collapsed: true,
                                ..Forwarded::default()
                            };
                            forwarded.note(&mut res, header);
                        }
                        return Poll::Ready(Ok(mark(res, outcome, header, ttl)));
                    }
                    Some(Landing::Failed(error))
                        if error.kind() == FlightErrorKind::WaitTimeout
                            && this.shared.config.wait_fallback == WaitFallback::CallOrigin =>
                    {
                        // Not each to the origin at the same instant: one of
                        // them leads a new flight there, the others follow.
                        this.state.set(State::Done);
                        rejoin(this.shared, this.call, true)
                    }
                    Some(Landing::Failed(error)) => {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(mark(
                            error.into_response(*this.grpc),
                            Outcome::Follower,
                            header,
                            None,
                        )));
                    }
                    Some(Landing::Pass) => pass(this.shared, this.call),
                    None => {
                        bump(&this.shared.counters.dangling);
                        // Leave the abandoned flight before looking again.
                        this.state.set(State::Done);
                        let key = this.call.as_ref().and_then(|(req, _)| this.shared.key(req));
                        match key {
                            // The extractor no longer keys this request.
                            None => pass(this.shared, this.call),
                            Some(mut key) => {
                                let headers = match this.call.as_ref() {
                                    Some((req, _)) => req.headers().clone(),
                                    None => http::HeaderMap::new(),
                                };
                                let held = leader::local_hit(this.shared, &mut key, &headers)
                                    .and_then(|entry| Some((entry.serve_as()?, entry)));
                                if let Some((outcome, entry)) = held {
                                    // A stale one is refreshed by the next
                                    // request that finds it.
                                    let counter = match outcome {
                                        Outcome::Stale => &this.shared.counters.stale,
                                        _ => &this.shared.counters.hits,
                                    };
                                    bump(counter);
                                    return Poll::Ready(Ok(mark(
                                        answer(this.call, &entry),
                                        outcome,
                                        header,
                                        entry.ttl_secs(),
                                    )));
                                }
                                match join(this.shared, &key, this.call) {
                                    Some(role) => start(this.shared, key, this.call, role),
                                    None => pass(this.shared, this.call),
                                }
                            }
                        }
                    }
                },
            };
            this.state.set(next);
        }
    }
}

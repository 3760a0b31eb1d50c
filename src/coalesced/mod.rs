//! A keyed request after a miss: it leads a flight (its task runs in
//! `leader`; this waits for the caller's own answer), follows one, or calls
//! the inner service alone — for a pass-through answer, a `Vary` it does
//! not match, or a wait timeout with the `CallOrigin` fallback.
//!
//! A follower never touches the backend: it waits for the flight's landing,
//! woken by it, never polling. A flight that was abandoned sends it back to the
//! table, where it leads or follows again.

use crate::flight::{Landing, Role, Wait};
use crate::leader;
use crate::origin::{Origin, OriginBody, Own};
use crate::shared::Shared;
use crate::stats::{bump, Started};
use crate::trace::Traced;
use crate::{CoalesceBody, FlightError, FlightErrorKind, Key, KeyExtractor, Outcome};
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
mod follow;
use follow::{landed, Follower, Next};

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
        // When it joined the flight table, for how long a follower waited.
        since: Started,
        // The request's span, if it is recorded.
        span: Traced,
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
    /// Starts as `role`: a leader's flight task is spawned here, its span
    /// a child of `span`. `refused`: the caller's directives refused an
    /// answer this process held.
    pub(crate) fn new(
        shared: Arc<Shared<E>>,
        key: Key,
        role: Role,
        req: Request<ReqBody>,
        inner: S,
        refused: bool,
        span: Traced,
    ) -> Self {
        let grpc = crate::error::is_grpc(&req);
        let joined = shared.config.backend.purge_position();
        let since = Started::now();
        let mut call = Some((req, inner));
        let state = {
            let _entered = span.as_deref().map(tracing::Span::enter);
            start(&shared, key, &mut call, role)
        };
        Self {
            shared,
            grpc,
            refused,
            joined,
            call,
            since,
            span,
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
        // Events of the request (and a flight it starts) are in its span.
        let _entered = this.span.as_deref().map(tracing::Span::enter);
        let answer = loop {
            let next = match this.state.as_mut().project() {
                StateProj::Leading { own } => {
                    let own = ready!(Pin::new(own).poll(cx));
                    this.state.set(State::Done);
                    break match own {
                        Ok(own) => own.map(|(res, outcome)| this.shared.mark(res, outcome, None)),
                        // The task ended without answering: only when the
                        // runtime shuts down.
                        Err(_) => Ok(this.shared.mark(
                            FlightError::new(
                                FlightErrorKind::Dropped,
                                "the flight's task was stopped",
                            )
                            .into_response(*this.grpc),
                            Outcome::Leader,
                            None,
                        )),
                    };
                }
                StateProj::Passing { future } => {
                    let res = ready!(future.as_mut().poll(cx));
                    this.state.set(State::Done);
                    break res.map(|res| this.shared.mark(res, Outcome::Pass, None));
                }
                StateProj::Done => panic!("Coalesced polled after completion"),
                StateProj::Following { mut wait } => {
                    // A refresh's callers get the answer it replaces, at
                    // once, while that may still be served.
                    let held = match wait.as_mut().poll_landed(cx) {
                        Poll::Ready(()) => None,
                        Poll::Pending => {
                            let refreshed = wait.as_ref().get_ref().refreshed();
                            match follow::while_refreshed(this.call, refreshed) {
                                Some(entry) => Some(Landing::Done(entry.clone())),
                                None => return Poll::Pending,
                            }
                        }
                    };
                    let wait = wait.as_ref().get_ref();
                    if let (Some(span), Some(flight)) = (this.span.as_deref(), wait.span()) {
                        span.follows_from(flight);
                    }
                    let follower = Follower {
                        shared: this.shared,
                        call: this.call,
                        joined: this.joined,
                        refused: *this.refused,
                        grpc: *this.grpc,
                        since: *this.since,
                    };
                    // Read where it landed, then off the flight.
                    let landing = held.as_ref().or_else(|| wait.landing());
                    match landed(follower, landing, wait.only()) {
                        Next::Answer(res) => {
                            this.state.set(State::Done);
                            break Ok(res);
                        }
                        Next::Go(state) => state,
                    }
                }
            };
            this.state.set(next);
        };
        if let Ok(res) = &answer {
            crate::trace::answered(this.span, res);
        }
        Poll::Ready(answer)
    }
}

//! [`ResponseFuture`]: the future of [`CoalesceService`](crate::CoalesceService).
//!
//! Every path is a named state, none allocated on its own: a request that
//! follows a flight keeps its waiting state here, in its caller's future,
//! rather than in a box of its own (one allocation, and one free, fewer per
//! follower when a million of them are answered at once).

use crate::coalesced::Coalesced;
use crate::conditions::Asked;
use crate::stats::{mark, Marks};
use crate::trace::Traced;
use crate::{BoxError, CoalesceBody, Entry, KeyExtractor, Outcome};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use pin_project_lite::pin_project;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tower_service::Service;

pin_project! {
    /// Response future of [`CoalesceService`](crate::CoalesceService) over an
    /// inner service `S` and key extractor `E`.
    pub struct ResponseFuture<S, E, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        kind: Kind<S, E, ReqBody, ResBody>,
        marks: Option<Arc<Marks>>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, E, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
    {
        // The entry, not a response built from it: an `Arc`, so hits keep
        // this future small. Each state but `Coalesced` (which keeps its
        // own) holds the request's span, if it is recorded: a follower's
        // future is not made larger by a span it never holds here.
        Ready { entry: Option<Entry>, asked: Asked, outcome: Outcome, span: Traced },
        Direct { #[pin] future: S::Future, outcome: Outcome, span: Traced },
        // Marks its own outcome.
        Coalesced { #[pin] future: Coalesced<S, E, ReqBody, ResBody> },
        // `only-if-cached`, with nothing stored: a 504.
        NotCached { span: Traced },
        // An answer made by a boxed future, marked `outcome`: an unsafe
        // request's, which purges its URL when it succeeds, or a direct call
        // bounded by the direct timeout.
        Boxed {
            future: BoxFuture<'static, Result<Response<CoalesceBody<ResBody>>, S::Error>>,
            outcome: Outcome,
            span: Traced,
        },
    }
}

impl<S, E, ReqBody, ResBody> ResponseFuture<S, E, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
{
    // The request's span is given to each constructor rather than set
    // after: a hit's future is built once, in place, never moved whole.

    /// A hit: the stored entry, answered for what the caller asked when
    /// first polled.
    pub(crate) fn hit(entry: Entry, asked: Asked, marks: Option<Arc<Marks>>, span: Traced) -> Self {
        Self::stored(entry, asked, Outcome::Hit, marks, span)
    }

    /// An answer from storage, marked `outcome` (a hit, or a stale answer).
    pub(crate) fn stored(
        entry: Entry,
        asked: Asked,
        outcome: Outcome,
        marks: Option<Arc<Marks>>,
        span: Traced,
    ) -> Self {
        Self {
            kind: Kind::Ready {
                entry: Some(entry),
                asked,
                outcome,
                span,
            },
            marks,
        }
    }

    /// The inner service's own future, answering untouched, marked with
    /// `outcome` (a bypass, or a pass for a key remembered as pass-through),
    /// and bounded by the direct timeout if one is set.
    pub(crate) fn direct<E2>(
        future: S::Future,
        outcome: Outcome,
        shared: &Arc<crate::shared::Shared<E2>>,
        grpc: bool,
        span: Traced,
    ) -> Self
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        S::Future: Send + 'static,
        E2: Send + Sync + 'static,
        ResBody: Send + 'static,
    {
        let marks = shared.marks.clone();
        if shared.config.direct_timeout.is_none() {
            return Self {
                kind: Kind::Direct {
                    future,
                    outcome,
                    span,
                },
                marks,
            };
        }
        let shared = shared.clone();
        let future = Box::pin(async move { crate::direct::bounded(&shared, future, grpc).await });
        Self {
            kind: Kind::Boxed {
                future,
                outcome,
                span,
            },
            marks,
        }
    }

    /// The answer to an `only-if-cached` request with nothing stored: `504`.
    pub(crate) fn not_cached(marks: Option<Arc<Marks>>, span: Traced) -> Self {
        Self {
            kind: Kind::NotCached { span },
            marks,
        }
    }

    /// An unsafe request the layer does not key: the inner service's answer,
    /// given once a successful one has purged what `write` names (its URL,
    /// and the same-origin URLs the answer names).
    pub(crate) fn purging<E2>(
        future: S::Future,
        purger: crate::Purger<E2>,
        write: crate::purge::Write,
        grpc: bool,
    ) -> Self
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        S::Future: Send + 'static,
        E2: KeyExtractor<ReqBody>,
        ResBody: Send + 'static,
    {
        let marks = purger.shared.marks.clone();
        let future = Box::pin(async move {
            let res = crate::direct::bounded(&purger.shared, future, grpc).await?;
            let status = res.status();
            // A write that timed out is no success: it purges nothing.
            if !(status.is_success() || status.is_redirection())
                || res.extensions().get::<crate::FlightError>().is_some()
            {
                return Ok(res);
            }
            let purges = purger.write_purges(write, res.headers());
            let purged =
                futures_util::future::join_all(purges.into_iter().map(|p| purger.purge(p))).await;
            if purged.iter().all(Result::is_ok) {
                return Ok(res);
            }
            // Each failure was logged by the purger.
            Ok(purger.write_purge_failed(res))
        });
        Self {
            kind: Kind::Boxed {
                future,
                outcome: Outcome::Bypass,
                span: None,
            },
            marks,
        }
    }

    /// A leader's or follower's future; it marks its own outcome.
    pub(crate) fn coalesced(future: Coalesced<S, E, ReqBody, ResBody>) -> Self {
        Self {
            kind: Kind::Coalesced { future },
            marks: None,
        }
    }
}

// The bounds of `CoalesceService`'s `Service` impl, spelled out rather than
// named by the crate's own shorthand so that they show in the docs.
impl<S, E, ReqBody, ResBody> Future for ResponseFuture<S, E, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Display + Send + 'static,
    E: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<CoalesceBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Each answer is recorded in its span where it is made: no
        // response is moved on its way out for it.
        match this.kind.project() {
            KindProj::Ready {
                entry,
                asked,
                outcome,
                span,
            } => {
                let entry = entry
                    .take()
                    .expect("ResponseFuture polled after completion");
                let marks = this.marks.as_deref();
                // Only `Cache-Status` asks for the freshness left.
                let ttl = marks
                    .filter(|m| m.cache_status.is_some())
                    .and_then(|_| entry.ttl_secs());
                let res = mark(asked.answer(&entry), *outcome, marks, ttl);
                crate::trace::answered(span, &res);
                Poll::Ready(Ok(res))
            }
            KindProj::Direct {
                future,
                outcome,
                span,
            } => {
                let res = ready!(future.poll(cx))?.map(CoalesceBody::inner);
                let res = mark(res, *outcome, this.marks.as_deref(), None);
                crate::trace::answered(span, &res);
                Poll::Ready(Ok(res))
            }
            KindProj::Coalesced { future } => future.poll(cx),
            KindProj::Boxed {
                future,
                outcome,
                span,
            } => {
                let res = ready!(future.as_mut().poll(cx))?;
                let res = mark(res, *outcome, this.marks.as_deref(), None);
                crate::trace::answered(span, &res);
                Poll::Ready(Ok(res))
            }
            KindProj::NotCached { span } => {
                let body = Bytes::from_static(b"only-if-cached: no stored answer\n");
                let mut res = Response::new(CoalesceBody::full(body, None));
                *res.status_mut() = http::StatusCode::GATEWAY_TIMEOUT;
                let res = mark(res, Outcome::NotCached, this.marks.as_deref(), None);
                crate::trace::answered(span, &res);
                Poll::Ready(Ok(res))
            }
        }
    }
}

impl<S, E, ReqBody, ResBody> std::fmt::Debug for ResponseFuture<S, E, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

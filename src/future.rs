//! [`ResponseFuture`]: the future of [`CoalesceService`](crate::CoalesceService).
//!
//! Every path is a named state, none allocated on its own: a request that
//! follows a flight keeps its waiting state here, in its caller's future,
//! rather than in a box of its own (one allocation, and one free, fewer per
//! follower when a million of them are answered at once).

use crate::coalesced::Coalesced;
use crate::conditions::Asked;
use crate::stats::{mark, Marks};
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
        // this future small.
        Ready { entry: Option<Entry>, asked: Asked, outcome: Outcome },
        Direct { #[pin] future: S::Future, outcome: Outcome },
        // Marks its own outcome.
        Coalesced { #[pin] future: Coalesced<S, E, ReqBody, ResBody> },
        // `only-if-cached`, with nothing stored: a 504.
        NotCached,
        // An unsafe request's answer, which purges its URL when it succeeds.
        Purging { future: BoxFuture<'static, Result<Response<CoalesceBody<ResBody>>, S::Error>> },
    }
}

impl<S, E, ReqBody, ResBody> ResponseFuture<S, E, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
{
    /// A hit: the stored entry, answered for what the caller asked when
    /// first polled.
    pub(crate) fn hit(entry: Entry, asked: Asked, marks: Option<Arc<Marks>>) -> Self {
        Self::stored(entry, asked, Outcome::Hit, marks)
    }

    /// An answer from storage, marked `outcome` (a hit, or a stale answer).
    pub(crate) fn stored(
        entry: Entry,
        asked: Asked,
        outcome: Outcome,
        marks: Option<Arc<Marks>>,
    ) -> Self {
        Self {
            kind: Kind::Ready {
                entry: Some(entry),
                asked,
                outcome,
            },
            marks,
        }
    }

    /// The inner service's own future, answering untouched, marked with
    /// `outcome` (a bypass, or a pass for a key remembered as pass-through).
    pub(crate) fn direct(future: S::Future, outcome: Outcome, marks: Option<Arc<Marks>>) -> Self {
        Self {
            kind: Kind::Direct { future, outcome },
            marks,
        }
    }

    /// The answer to an `only-if-cached` request with nothing stored: `504`.
    pub(crate) fn not_cached(marks: Option<Arc<Marks>>) -> Self {
        Self {
            kind: Kind::NotCached,
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
        marks: Option<Arc<Marks>>,
    ) -> Self
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        S::Future: Send + 'static,
        E2: KeyExtractor<ReqBody>,
        ResBody: Send + 'static,
    {
        let future = Box::pin(async move {
            let res = future.await?;
            let status = res.status();
            if !(status.is_success() || status.is_redirection()) {
                return Ok(res.map(CoalesceBody::inner));
            }
            let purges = purger.write_purges(write, res.headers());
            let purged =
                futures_util::future::join_all(purges.into_iter().map(|p| purger.purge(p))).await;
            if purged.iter().all(Result::is_ok) {
                return Ok(res.map(CoalesceBody::inner));
            }
            // Each failure was logged by the purger.
            Ok(purger.write_purge_failed(res))
        });
        Self {
            kind: Kind::Purging { future },
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
        match this.kind.project() {
            KindProj::Ready {
                entry,
                asked,
                outcome,
            } => {
                let entry = entry
                    .take()
                    .expect("ResponseFuture polled after completion");
                let marks = this.marks.as_deref();
                // Only `Cache-Status` asks for the freshness left.
                let ttl = marks
                    .filter(|m| m.cache_status.is_some())
                    .and_then(|_| entry.ttl_secs());
                Poll::Ready(Ok(mark(asked.answer(&entry), *outcome, marks, ttl)))
            }
            KindProj::Direct { future, outcome } => {
                let res = ready!(future.poll(cx))?;
                Poll::Ready(Ok(mark(
                    res.map(CoalesceBody::inner),
                    *outcome,
                    this.marks.as_deref(),
                    None,
                )))
            }
            KindProj::Coalesced { future } => future.poll(cx),
            KindProj::Purging { future } => {
                let res = ready!(future.as_mut().poll(cx))?;
                Poll::Ready(Ok(mark(res, Outcome::Bypass, this.marks.as_deref(), None)))
            }
            KindProj::NotCached => {
                let body = Bytes::from_static(b"only-if-cached: no stored answer\n");
                let mut res = Response::new(CoalesceBody::full(body, None));
                *res.status_mut() = http::StatusCode::GATEWAY_TIMEOUT;
                Poll::Ready(Ok(mark(
                    res,
                    Outcome::NotCached,
                    this.marks.as_deref(),
                    None,
                )))
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

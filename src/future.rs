//! [`ResponseFuture`]: the future of [`CoalesceService`](crate::CoalesceService).
//!
//! Hits and bypasses, the paths every request may take, are named states with
//! no allocation; only requests that lead or follow a flight, which wait
//! anyway, are boxed.

use crate::{BoxError, CoalesceBody, Entry, Outcome};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

pin_project! {
    /// Response future of [`CoalesceService`](crate::CoalesceService).
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
        header: Option<HeaderName>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        // The entry, not a response built from it: an `Arc`, so hits keep
        // this future small.
        Ready { entry: Option<Entry> },
        Direct { #[pin] future: F, outcome: Outcome },
        Coalesced { future: BoxFuture<'static, Result<Response<CoalesceBody<B>>, E>> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    /// A hit: the stored entry, answered when first polled.
    pub(crate) fn hit(entry: Entry, header: Option<HeaderName>) -> Self {
        Self {
            kind: Kind::Ready { entry: Some(entry) },
            header,
        }
    }

    /// The inner service's own future, answering untouched, marked with
    /// `outcome` (a bypass, or a pass for a key remembered as uncacheable).
    pub(crate) fn direct(future: F, outcome: Outcome, header: Option<HeaderName>) -> Self {
        Self {
            kind: Kind::Direct { future, outcome },
            header,
        }
    }

    /// A leader's or follower's future; it marks its own outcome.
    pub(crate) fn coalesced(
        future: BoxFuture<'static, Result<Response<CoalesceBody<B>>, E>>,
    ) -> Self {
        Self {
            kind: Kind::Coalesced { future },
            header: None,
        }
    }
}

/// Records `outcome` in the response's extensions, and as `header` if set.
pub(crate) fn mark<B>(
    mut res: Response<B>,
    outcome: Outcome,
    header: Option<&HeaderName>,
) -> Response<B> {
    if let Some(name) = header {
        res.headers_mut()
            .insert(name.clone(), HeaderValue::from_static(outcome.as_str()));
    }
    res.extensions_mut().insert(outcome);
    res
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<CoalesceBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Ready { entry } => {
                let entry = entry
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(mark(
                    entry.to_response(),
                    Outcome::Hit,
                    this.header.as_ref(),
                )))
            }
            KindProj::Direct { future, outcome } => {
                let res = ready!(future.poll(cx))?;
                Poll::Ready(Ok(mark(
                    res.map(CoalesceBody::inner),
                    *outcome,
                    this.header.as_ref(),
                )))
            }
            KindProj::Coalesced { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, B, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

//! The access log: one line per request, written when its body has been
//! sent (or the client went away), at INFO under the target
//! `coalesce_proxy::access`: method, path (without the query unless asked:
//! queries carry tokens), status, outcome, the key's fingerprint (`key`,
//! as the library's own logs name keys; `-` for a request the layer did
//! not key), duration to the last byte, and the bytes sent. Never a
//! header, never the key itself: credentials stay out of logs.

use crate::conn::Busy;
use bytes::Bytes;
use http::{Method, Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tower_coalesce::Outcome;

/// The target access lines are logged under.
pub const TARGET: &str = "coalesce_proxy::access";

/// What the access log is told of one request before it is answered.
pub(crate) struct Pending {
    method: Method,
    path: String,
    start: Instant,
    key: KeySlot,
}

/// Where the proxy writes the fingerprint of a logged request's key, once
/// the request is routed (the route's extractor names it): in the
/// request's extensions while the access log is on.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySlot(Arc<OnceLock<String>>);

impl KeySlot {
    /// Names `key` as the request's.
    pub(crate) fn fill(&self, key: &tower_coalesce::Key) {
        let _ = self.0.set(key.fingerprint().to_string());
    }
}

impl Pending {
    /// Notes `req`, its query kept only if `query` says so, and gives it
    /// the slot its key's fingerprint goes in.
    pub(crate) fn of<B>(req: &mut Request<B>, query: bool) -> Self {
        let uri = req.uri();
        let path = match (query, uri.path_and_query()) {
            (true, Some(pq)) => pq.as_str().to_owned(),
            _ => uri.path().to_owned(),
        };
        let key = KeySlot::default();
        req.extensions_mut().insert(key.clone());
        Self {
            method: req.method().clone(),
            path,
            start: Instant::now(),
            key,
        }
    }

    /// The response, its body logged when it ends (at once for a body
    /// that is over before it starts: a `HEAD`, a `304`).
    pub(crate) fn answered<B: Body>(self, res: Response<B>, busy: Busy) -> Response<Logged<B>> {
        let status = res.status().as_u16();
        let outcome = res
            .extensions()
            .get::<Outcome>()
            .map_or("-", |o| o.as_str());
        let line = Line {
            pending: self,
            status,
            outcome,
        };
        res.map(|inner| {
            let line = if inner.is_end_stream() {
                line.emit(0, "complete");
                None
            } else {
                Some(line)
            };
            Logged {
                inner,
                line,
                bytes: 0,
                _busy: busy,
            }
        })
    }
}

impl<B> Logged<B> {
    /// A body not logged.
    pub(crate) fn unlogged(inner: B, busy: Busy) -> Self {
        Logged {
            inner,
            line: None,
            bytes: 0,
            _busy: busy,
        }
    }
}

struct Line {
    pending: Pending,
    status: u16,
    outcome: &'static str,
}

impl Line {
    fn emit(self, bytes: u64, end: &'static str) {
        let Line {
            pending,
            status,
            outcome,
        } = self;
        let duration_ms = pending.start.elapsed().as_secs_f64() * 1000.0;
        // A bypassed request has a key only in name: the layer did not
        // use it.
        let key = match pending.key.0.get() {
            Some(key) if outcome != Outcome::Bypass.as_str() => key.as_str(),
            _ => "-",
        };
        tracing::info!(
            target: TARGET,
            method = %pending.method,
            path = %pending.path,
            status,
            outcome,
            key,
            duration_ms,
            bytes,
            end,
            "request"
        );
    }
}

pin_project! {
    /// A response body that logs its request's line when it ends: `end` is
    /// `complete`, `failed` (the upstream's body failed), or `aborted` (the
    /// client went away first).
    pub struct Logged<B> {
        #[pin]
        inner: B,
        line: Option<Line>,
        bytes: u64,
        // Its request counts as in progress on its connection until the
        // body is dropped: sent, failed or abandoned.
        _busy: Busy,
    }

    impl<B> PinnedDrop for Logged<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(line) = this.line.take() {
                line.emit(*this.bytes, "aborted");
            }
        }
    }
}

impl<B: Body> Logged<B> {
    /// Logs the line as complete if nothing of the body is left: hyper
    /// stops polling a body once it has its declared length, without
    /// asking for its end.
    fn ended(self: Pin<&mut Self>) {
        let this = self.project();
        let inner = this.inner.as_ref().get_ref();
        if inner.is_end_stream() || inner.size_hint().exact() == Some(0) {
            if let Some(line) = this.line.take() {
                line.emit(*this.bytes, "complete");
            }
        }
    }
}

impl<B> Body for Logged<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.as_mut().project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
                self.ended();
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(line) = this.line.take() {
                    line.emit(*this.bytes, "failed");
                }
            }
            Poll::Ready(None) => {
                if let Some(line) = this.line.take() {
                    line.emit(*this.bytes, "complete");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

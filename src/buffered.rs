//! Reading a request body whole, up to a limit, without losing anything:
//! what the buffering layers of gRPC calls and of body-keyed HTTP requests
//! share. A body that is too large, has trailers or fails goes on with the
//! frames already read, then its unread rest (or its error), in order.

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The call of a buffering layer's inner service for a request whose body
/// it reads first: up to `limit` bytes, recorded in the request's
/// extensions as `record` makes them if read whole. The call happens after
/// an await, so `inner`, which `poll_ready` readied, is taken and a fresh
/// clone left in its place.
pub(crate) fn read_then_call<S, B, X>(
    inner: &mut S,
    req: http::Request<B>,
    limit: usize,
    record: fn(Bytes) -> X,
) -> futures_util::future::BoxFuture<'static, Result<S::Response, S::Error>>
where
    S: tower_service::Service<http::Request<BufferedBody<B>>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send,
    X: Clone + Send + Sync + 'static,
{
    let clone = inner.clone();
    let mut inner = std::mem::replace(inner, clone);
    Box::pin(async move {
        let (parts, body) = req.into_parts();
        let (body, read) = read_up_to(body, limit).await;
        let mut req = http::Request::from_parts(parts, body);
        if let Some(read) = read {
            req.extensions_mut().insert(record(read));
        }
        inner.call(req).await
    })
}

/// Reads `body` to its end if it holds at most `limit` bytes of data and no
/// trailers, and returns a body with the same content and, then, its bytes.
/// Otherwise the returned body gives the frames already read and then the
/// unread rest (or the error that ended it): nothing is lost or reordered.
pub(crate) async fn read_up_to<B>(body: B, limit: usize) -> (BufferedBody<B>, Option<Bytes>)
where
    B: Body<Data = Bytes>,
{
    if body.size_hint().lower() > limit as u64 {
        return (BufferedBody::untouched(body), None);
    }
    let mut body = Box::pin(body);
    let mut frames = VecDeque::new();
    let mut len = 0usize;
    let mut complete = true;
    loop {
        if len > limit {
            return (BufferedBody::partial(frames, None, Some(body)), None);
        }
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                match frame.data_ref() {
                    Some(data) => len = len.saturating_add(data.len()),
                    // Trailers could change the answer and are not in the key.
                    None => complete = false,
                }
                frames.push_back(frame);
            }
            Some(Err(error)) => return (BufferedBody::partial(frames, Some(error), None), None),
        }
    }
    if !complete {
        return (BufferedBody::partial(frames, None, None), None);
    }
    let mut message = BytesMut::with_capacity(len);
    for frame in frames {
        if let Ok(data) = frame.into_data() {
            message.extend_from_slice(&data);
        }
    }
    let message = message.freeze();
    (BufferedBody::whole(message.clone()), Some(message))
}

pin_project! {
    /// A request body after a buffering layer (`grpc::BufferLayer`,
    /// `body_keys::BufferLayer`): the same frames as the body that came, in
    /// the same order, with the same ending.
    pub struct BufferedBody<B: Body> {
        #[pin]
        state: State<B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B: Body> {
        /// Not read: the body as it came.
        Untouched { #[pin] body: B },
        /// Read whole: one data frame, then the end.
        Whole { data: Option<Bytes> },
        /// Read in part: these frames, then the error that ended the body or
        /// its unread rest.
        Partial {
            read: VecDeque<Frame<Bytes>>,
            error: Option<B::Error>,
            rest: Option<Pin<Box<B>>>,
        },
    }
}

impl<B: Body> BufferedBody<B> {
    pub(crate) fn untouched(body: B) -> Self {
        Self {
            state: State::Untouched { body },
        }
    }

    pub(crate) fn whole(data: Bytes) -> Self {
        Self {
            state: State::Whole {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn partial(
        read: VecDeque<Frame<Bytes>>,
        error: Option<B::Error>,
        rest: Option<Pin<Box<B>>>,
    ) -> Self {
        Self {
            state: State::Partial { read, error, rest },
        }
    }
}

impl<B> Body for BufferedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().state.project() {
            StateProj::Untouched { body } => body.poll_frame(cx),
            StateProj::Whole { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            StateProj::Partial { read, error, rest } => {
                if let Some(frame) = read.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(error) = error.take() {
                    return Poll::Ready(Some(Err(error)));
                }
                match rest {
                    Some(rest) => rest.as_mut().poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Untouched { body } => body.is_end_stream(),
            State::Whole { data } => data.is_none(),
            State::Partial { read, error, rest } => {
                read.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|r| r.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Untouched { body } => body.size_hint(),
            State::Whole { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            State::Partial { read, error, rest } => {
                let read: u64 = read
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.len() as u64)
                    .sum();
                match (error, rest) {
                    (None, None) => SizeHint::with_exact(read),
                    (_, Some(rest)) => {
                        let hint = rest.size_hint();
                        let mut out = SizeHint::new();
                        out.set_lower(read.saturating_add(hint.lower()));
                        if let Some(upper) = hint.upper() {
                            out.set_upper(read.saturating_add(upper));
                        }
                        out
                    }
                    (Some(_), None) => {
                        let mut out = SizeHint::new();
                        out.set_lower(read);
                        out
                    }
                }
            }
        }
    }
}

impl<B: Body> std::fmt::Debug for BufferedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Untouched { .. } => "untouched",
            State::Whole { .. } => "whole",
            State::Partial { .. } => "partial",
        };
        f.debug_struct("BufferedBody")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

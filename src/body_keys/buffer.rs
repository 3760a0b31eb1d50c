//! [`BufferLayer`]: reads the bodies of the routes' requests so that a key
//! can be made of them, and hands on a body with the same frames.

use super::{RequestBody, Routes};
use crate::buffered::{read_then_call, BufferedBody};
use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use http::Request;
use http_body::Body;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// Reads the request body of the routes of a [`BodyKeys`](super::BodyKeys),
/// up to each route's limit, into a [`RequestBody`] extension; made by
/// [`BodyKeys::buffer_layer`](super::BodyKeys::buffer_layer). Place it
/// outside the [`CoalesceLayer`](crate::CoalesceLayer).
///
/// A request is read only if a route takes its method and path, its
/// `Content-Type` is one of the route's, and it has no `Content-Encoding`.
/// A body larger than the limit (by its size hint, or as it arrives), with
/// trailers, or that fails goes on with the frames read so far and then its
/// unread rest or its error: nothing is lost or reordered, and its request
/// bypasses the coalescing layer. Other requests go on untouched.
#[derive(Debug, Clone)]
pub struct BufferLayer {
    routes: Routes,
}

impl BufferLayer {
    pub(super) fn new(routes: Routes) -> Self {
        Self { routes }
    }
}

impl<S> Layer<S> for BufferLayer {
    type Service = Buffer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Buffer {
            inner,
            routes: self.routes.clone(),
        }
    }
}

/// The service made by [`BufferLayer`].
#[derive(Debug, Clone)]
pub struct Buffer<S> {
    inner: S,
    routes: Routes,
}

impl<S, B> Service<Request<B>> for Buffer<S>
where
    S: Service<Request<BufferedBody<B>>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let limit = match self.routes.of(req.method(), req.uri().path()) {
            Some(route)
                if super::Route::reads_body(req.method()) && route.readable(req.headers()) =>
            {
                route.limit
            }
            _ => return Either::Left(self.inner.call(req.map(BufferedBody::untouched))),
        };
        Either::Right(read_then_call(&mut self.inner, req, limit, RequestBody))
    }
}

//! [`BufferLayer`]: reads the request message of allow-listed calls so that
//! a key can be made of it, and hands on a body with the same frames.

use super::{Methods, RequestMessage};
use crate::buffered::read_then_call;
pub use crate::buffered::BufferedBody;
use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use http::Request;
use http_body::Body;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// Reads the request body of the listed methods, up to a limit, into a
/// [`RequestMessage`] extension, so that [`GrpcKey`](super::GrpcKey) can key
/// the call by it. See the [module](super) documentation.
#[derive(Debug, Clone)]
pub struct BufferLayer {
    methods: Methods,
    limit: usize,
}

impl BufferLayer {
    /// The limit unless [`limit`](Self::limit) says otherwise: 64 KiB.
    pub const DEFAULT_LIMIT: usize = 64 * 1024;

    /// Reads the bodies of `methods` (paths such as
    /// `/catalog.Catalog/GetProduct`) of at most
    /// [`DEFAULT_LIMIT`](Self::DEFAULT_LIMIT) bytes.
    pub fn new<I, S>(methods: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            methods: Methods::new(methods),
            limit: Self::DEFAULT_LIMIT,
        }
    }

    /// Reads bodies of at most `bytes`; a larger one goes on as it arrives,
    /// and its call bypasses coalescing.
    pub fn limit(mut self, bytes: usize) -> Self {
        self.limit = bytes;
        self
    }
}

impl<S> Layer<S> for BufferLayer {
    type Service = Buffer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Buffer {
            inner,
            methods: self.methods.clone(),
            limit: self.limit,
        }
    }
}

/// The service made by [`BufferLayer`].
#[derive(Debug, Clone)]
pub struct Buffer<S> {
    inner: S,
    methods: Methods,
    limit: usize,
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
        if !self.methods.contains(req.uri().path()) {
            return Either::Left(self.inner.call(req.map(BufferedBody::untouched)));
        }
        Either::Right(read_then_call(
            &mut self.inner,
            req,
            self.limit,
            RequestMessage,
        ))
    }
}

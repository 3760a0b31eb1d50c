//! A tonic gRPC service whose unary `GetProduct` method is coalesced: a burst
//! of identical calls costs one handler call, and every caller gets the same
//! reply message, or the same status.
//!
//! ```text
//! cargo run --example tonic_unary --features grpc
//! ```
//!
//! It starts the server on a free local port, sends 1,000 identical
//! `GetProduct` calls at once, then 100 calls for a product that does not
//! exist, and prints how often the handler ran for each burst. Each burst
//! arrives while its first call is still in the handler (it takes 300 ms), so
//! expect `1 handler call(s)` twice: 1 leader and 999 followers with the same
//! product, then 100 `NotFound` statuses with the same message.
//!
//! # How the pieces fit
//! Outermost first, inside tonic's `Server` (whose `grpc-timeout` deadline
//! wraps all of this, so each caller keeps its own deadline):
//! 1. the library's [`BufferLayer`] (the `grpc` feature) reads the request
//!    body of the coalesced methods, up to [`MAX_KEYED_REQUEST_BYTES`], and
//!    records it as a `RequestMessage` extension. Requests of other methods,
//!    larger ones, and ones with trailers are forwarded with their body
//!    intact.
//! 2. [`CoalesceLayer`] keyed by [`GrpcKey`]: method path, the metadata that
//!    can change the answer, and the request message bytes.
//! 3. tonic's router, then [`CatalogServer`], then the [`Catalog`] handler.
//!
//! The body has to be read before the key can be made because a
//! [`KeyExtractor`] sees the request synchronously and gRPC puts the
//! arguments in the body.
//!
//! # Why the gRPC glue is hand-written
//! `tonic-build` generates messages, server and client from a `.proto` file
//! at build time, which needs `protoc` and a build script. To build this
//! crate's examples and tests without either, this file writes the same few
//! items by hand, the way the generated code does: messages deriving
//! [`prost::Message`], a server routing the method path to
//! [`tonic::server::Grpc::unary`] with [`tonic_prost::ProstCodec`], and a
//! client calling [`tonic::client::Grpc::unary`]. Generated services work
//! with the two layers unchanged.
//!
//! # gRPC answers through the layer
//! A successful reply carries `grpc-status: 0` in its trailers; the layer
//! buffers trailers with the body and gives them to every follower. A status
//! returned by the handler is a "trailers-only" response (`grpc-status` and
//! `grpc-message` in the headers), shared like any other head.
//!
//! Nothing is stored here (`ttl` zero): only calls that arrive during a
//! flight share it. With a `ttl`, only `OK` answers are stored: the layer
//! reads `grpc-status` (in the head or the trailers) and shares an error
//! with its flight without storing it. Callers of a flight that fails inside
//! the layer (a handler panic, the wait timeout) get a gRPC answer with the
//! matching status (`INTERNAL`, `DEADLINE_EXCEEDED`, `UNAVAILABLE`).

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::Status;
use tower::Service;
use tower_coalesce::grpc::{BufferLayer, GrpcKey};
use tower_coalesce::{CoalesceConfig, CoalesceLayer};

// ---------------------------------------------------------------------------
// Messages and service glue, as `tonic-build` would generate them from:
//
//   package catalog;
//   service Catalog { rpc GetProduct(GetProductRequest) returns (Product); }
//   message GetProductRequest { uint64 id = 1; repeated string fields = 2; }
//   message Product { uint64 id = 1; string name = 2; uint32 fields_requested = 3; }
// ---------------------------------------------------------------------------

/// The gRPC service name, as in the `.proto` package and service.
pub const SERVICE: &str = "catalog.Catalog";

/// The path of the `GetProduct` method: `/{service}/{method}`.
pub const GET_PRODUCT: &str = "/catalog.Catalog/GetProduct";

/// The request of `GetProduct`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetProductRequest {
    /// The product's id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The fields the caller wants (a field mask); empty means all.
    #[prost(string, repeated, tag = "2")]
    pub fields: Vec<String>,
}

/// The reply of `GetProduct`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Product {
    /// The product's id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Its display name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// How many fields the request asked for.
    #[prost(uint32, tag = "3")]
    pub fields_requested: u32,
}

/// The handler side of the `Catalog` service (the generated trait's shape).
pub trait Catalog: Send + Sync + 'static {
    /// Answers one `GetProduct` call.
    fn get_product(
        &self,
        request: tonic::Request<GetProductRequest>,
    ) -> impl Future<Output = Result<tonic::Response<Product>, Status>> + Send;
}

/// The `Catalog` service as tonic's router sees it: routes each method path
/// to its handler, like a generated `CatalogServer`.
#[derive(Debug)]
pub struct CatalogServer<T> {
    inner: Arc<T>,
}

impl<T> CatalogServer<T> {
    /// Serves `catalog`.
    pub fn new(catalog: T) -> Self {
        Self::from_arc(Arc::new(catalog))
    }

    /// Serves a catalog the caller keeps a handle on.
    pub fn from_arc(catalog: Arc<T>) -> Self {
        Self { inner: catalog }
    }
}

impl<T> Clone for CatalogServer<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T> tonic::server::NamedService for CatalogServer<T> {
    const NAME: &'static str = SERVICE;
}

impl<T, B> Service<Request<B>> for CatalogServer<T>
where
    T: Catalog,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        match req.uri().path() {
            GET_PRODUCT => Box::pin(async move {
                // `UnaryService` is implemented for any tower service from
                // `tonic::Request` to `tonic::Response` with `Status` errors.
                let method = tower::service_fn(move |request| {
                    let inner = inner.clone();
                    async move { inner.get_product(request).await }
                });
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(method, req).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}

/// A client of the `Catalog` service, like a generated `CatalogClient`.
#[derive(Debug, Clone)]
pub struct CatalogClient {
    inner: tonic::client::Grpc<Channel>,
}

impl CatalogClient {
    /// A client sending its calls over `channel`.
    pub fn new(channel: Channel) -> Self {
        Self {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    /// Calls `GetProduct`.
    pub async fn get_product(
        &mut self,
        request: impl tonic::IntoRequest<GetProductRequest>,
    ) -> Result<tonic::Response<Product>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("service was not ready: {e}")))?;
        let mut request = request.into_request();
        request
            .extensions_mut()
            .insert(tonic::GrpcMethod::new(SERVICE, "GetProduct"));
        let path = http::uri::PathAndQuery::from_static(GET_PRODUCT);
        let codec = tonic_prost::ProstCodec::default();
        self.inner.unary(request, path, codec).await
    }
}

// ---------------------------------------------------------------------------
// Coalescing: the request body becomes part of the key.
// ---------------------------------------------------------------------------

/// The unary methods whose answer depends only on the request message and
/// the metadata in [`GrpcKey`]: reads without side effects. Every other
/// method, streaming ones above all, is left alone.
pub const COALESCED_METHODS: &[&str] = &[GET_PRODUCT];

/// The largest request body that is read to make a key. A larger request
/// bypasses coalescing; its body is forwarded as it arrives.
pub const MAX_KEYED_REQUEST_BYTES: usize = BufferLayer::DEFAULT_LIMIT;

/// The layer as this example configures it: coalesce only (nothing stored),
/// keyed by [`GrpcKey`] over [`COALESCED_METHODS`], with each reply's
/// outcome in its `x-coalesce` metadata.
pub fn coalesce_layer() -> CoalesceLayer<GrpcKey> {
    CoalesceLayer::builder(
        // gRPC calls are `POST`s: the listed unary methods are keyed by
        // their whole request message.
        CoalesceConfig::new()
            .methods([http::Method::POST])
            .outcome_header("x-coalesce"),
    )
    .extractor(GrpcKey::new(COALESCED_METHODS.iter().copied()))
    .build()
    .expect("a valid configuration")
}

/// Serves `catalog` on `listener` behind [`BufferLayer`] and `layer`,
/// until the task is dropped or the listener fails.
pub async fn serve<T: Catalog>(
    listener: TcpListener,
    catalog: Arc<T>,
    layer: CoalesceLayer<GrpcKey>,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .layer(BufferLayer::new(COALESCED_METHODS.iter().copied()).limit(MAX_KEYED_REQUEST_BYTES))
        .layer(layer)
        .add_service(CatalogServer::from_arc(catalog))
        .serve_with_incoming(TcpIncoming::from(listener))
        .await
}

/// A client connected to `addr`.
pub async fn connect(addr: SocketAddr) -> Result<CatalogClient, tonic::transport::Error> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a socket address makes a valid URI")
        .connect()
        .await?;
    Ok(CatalogClient::new(channel))
}

// ---------------------------------------------------------------------------
// The demo.
// ---------------------------------------------------------------------------

/// A slow catalog that counts its calls. Product 0 does not exist.
#[derive(Debug, Default)]
struct SlowCatalog {
    calls: AtomicUsize,
}

impl Catalog for SlowCatalog {
    async fn get_product(
        &self,
        request: tonic::Request<GetProductRequest>,
    ) -> Result<tonic::Response<Product>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let request = request.into_inner();
        if request.id == 0 {
            return Err(Status::not_found(format!("no product {}", request.id)));
        }
        Ok(tonic::Response::new(Product {
            id: request.id,
            name: format!("product {}", request.id),
            fields_requested: u32::try_from(request.fields.len()).unwrap_or(u32::MAX),
        }))
    }
}

/// Sends `calls` identical `GetProduct` calls at once; returns each call's
/// answer (reply or status, as text) and its outcome.
async fn burst(client: &CatalogClient, id: u64, calls: usize) -> Vec<(String, String)> {
    fn outcome(metadata: &tonic::metadata::MetadataMap) -> String {
        let value = metadata.get("x-coalesce").and_then(|v| v.to_str().ok());
        value.unwrap_or("-").to_owned()
    }
    let calls = (0..calls).map(|_| {
        let mut client = client.clone();
        let request = GetProductRequest {
            id,
            fields: vec!["name".into()],
        };
        tokio::spawn(async move {
            match client.get_product(request).await {
                Ok(reply) => (format!("{:?}", reply.get_ref()), outcome(reply.metadata())),
                Err(status) => (
                    format!("{:?}: {}", status.code(), status.message()),
                    outcome(status.metadata()),
                ),
            }
        })
    });
    let answers = futures_util::future::join_all(calls).await;
    answers
        .into_iter()
        .map(|a| a.expect("a call task panicked"))
        .collect()
}

fn print_burst(label: &str, answers: &[(String, String)], handler_calls: usize) {
    let mut distinct: Vec<&str> = answers.iter().map(|(a, _)| a.as_str()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let followers = answers.iter().filter(|(_, o)| o == "follower").count();
    println!(
        "{label}: {} calls, {handler_calls} handler call(s), {followers} followers, distinct answers: {distinct:?}",
        answers.len()
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let catalog = Arc::new(SlowCatalog::default());
    let layer = coalesce_layer();
    tokio::spawn(serve(listener, catalog.clone(), layer.clone()));
    let client = connect(addr).await?;
    println!("serving {SERVICE} on {addr}");

    let answers = burst(&client, 7, 1_000).await;
    let first = catalog.calls.load(Ordering::SeqCst);
    print_burst("GetProduct id 7", &answers, first);

    let answers = burst(&client, 0, 100).await;
    print_burst(
        "GetProduct id 0",
        &answers,
        catalog.calls.load(Ordering::SeqCst) - first,
    );
    println!("{:?}", layer.stats());
    Ok(())
}

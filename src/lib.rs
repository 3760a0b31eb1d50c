//! Request coalescing for [tower] services: identical concurrent requests cost
//! one call to the inner service, and everyone gets its answer.
//!
//! When a hot entry expires or a cold burst arrives, every request misses the
//! cache and goes to the database together (a *cache stampede*).
//! [`CoalesceLayer`] gives each request a [`Key`]; the first request of a key
//! becomes the *leader* of a *flight* and calls the inner service, every
//! request with the same key that arrives meanwhile becomes a *follower* and
//! is woken with the same answer — never by polling. With a
//! [TTL](CoalesceConfig::ttl) the answer is also kept in a [`Backend`] and
//! answers later requests without a flight.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Empty, Full};
//! use tower::{Layer, ServiceExt};
//! use tower_coalesce::{CoalesceConfig, CoalesceLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let queries = Arc::new(AtomicUsize::new(0));
//! let counted = queries.clone();
//! // The "database": slow, and counted.
//! let origin = tower::service_fn(move |_req: Request<Empty<bytes::Bytes>>| {
//!     counted.fetch_add(1, Ordering::SeqCst);
//!     async {
//!         tokio::time::sleep(Duration::from_millis(50)).await;
//!         Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from("{\"id\":7}"))))
//!     }
//! });
//!
//! let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(1)));
//! let svc = layer.layer(origin);
//!
//! // A hundred identical requests at once...
//! let burst = (0..100).map(|_| {
//!     let req = Request::get("/products/7").body(Empty::new()).unwrap();
//!     svc.clone().oneshot(req)
//! });
//! for res in futures_util::future::join_all(burst).await {
//!     let body = res.unwrap().into_body().collect().await.unwrap().to_bytes();
//!     assert_eq!(body, "{\"id\":7}");
//! }
//! // ...cost one query.
//! assert_eq!(queries.load(Ordering::SeqCst), 1);
//! assert_eq!(layer.stats().followers, 99);
//! # }
//! ```
//!
//! # In an axum app
//! Hand the layer to `Router::layer`, outermost, so keys see the whole path.
//! At shutdown, stop the server first, then the layer:
//!
//! ```no_run
//! use axum::{extract::Path, routing::get, Router};
//! use std::time::Duration;
//! use tower_coalesce::{CoalesceConfig, CoalesceLayer};
//!
//! async fn product(Path(id): Path<u64>) -> String {
//!     // The database query: once per burst, and once per second at most.
//!     format!("{{\"id\":{id}}}")
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(1)));
//!     let app = Router::new()
//!         .route("/products/{id}", get(product))
//!         .layer(layer.clone());
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app)
//!         .with_graceful_shutdown(async {
//!             let _ = tokio::signal::ctrl_c().await;
//!         })
//!         .await?;
//!     // Flights whose callers left get 5 s; leases still held are released.
//!     layer.shutdown(Duration::from_secs(5)).await;
//!     Ok(())
//! }
//! ```
//!
//! # Across instances: Redis
//! Instances that share a [`RedisBackend`] share flights and stored answers:
//! a burst spread over all of them costs one origin call. Give every
//! service its own [namespace](RedisBackendBuilder::namespace); the lease
//! says how soon the others take over from an instance that died.
//!
//! ```no_run
//! # async fn run() -> Result<(), tower_coalesce::BackendError> {
//! use std::time::Duration;
//! use tower_coalesce::{CoalesceConfig, CoalesceLayer, RedisBackend};
//!
//! let redis = RedisBackend::builder("redis://127.0.0.1:6379/")
//!     .namespace("catalog")
//!     .connect()
//!     .await?;
//! let layer = CoalesceLayer::new(
//!     CoalesceConfig::new()
//!         // Instances hand answers to each other through the stored entry.
//!         .ttl(Duration::from_secs(10))
//!         .lease(Duration::from_secs(10))
//!         .backend(redis),
//! );
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```
//! Without a backend, the layer uses an in-process [`MemoryBackend`]. Redis
//! that is slow or down costs at most
//! [`backend_timeout`](CoalesceConfig::backend_timeout) per flight; the flight
//! goes on within the process (see the README's failure modes).
//!
//! # gRPC (tonic)
//! With the `grpc` feature, the `grpc` module's `BufferLayer` and `GrpcKey`
//! coalesce allow-listed unary methods by their request message; its
//! documentation shows the two layers in a tonic server.
//!
//! # Queries in the body (JSON, GraphQL)
//! With the `body-keys` feature, the `body_keys` module's `BufferLayer` and
//! `BodyKeys` coalesce `POST`s of listed routes by what their body means
//! (canonical JSON; with `graphql`, the selected operation and its
//! variables), sharing answers among concurrent duplicates without storing
//! them unless a route says so.
//!
//! # What is shared, and with whom
//! - The default key, [`HttpKey`], is the authority, path and query plus
//!   `Accept*` headers, framed so that no header value can shift into
//!   another. Any closure `Fn(&Request<B>) -> Option<Key>` can replace it.
//! - Whatever the extractor, only the [configured methods](CoalesceConfig::methods)
//!   coalesce (`GET` and `HEAD`; a `HEAD` shares a `GET`'s answer, without
//!   its body), and requests with `Authorization`, `Proxy-Authorization`,
//!   `Cookie` or a [credential header](CoalesceConfig::credential_header)
//!   bypass unless the extractor [keys it](KeyExtractor::keys_header).
//! - A flight fetches the whole representation, without its callers'
//!   validators or ranges; each caller then gets its own `304`, `412`, `206`
//!   or `416` computed from the shared answer (RFC 9110 §13, §14). Such an
//!   answer made for one caller is never given to another, nor stored.
//! - A response with `Set-Cookie`, `Cache-Control: private`/`no-store` (or a
//!   `Cache-Control` that cannot be read), or
//!   `Vary: *` is given only to its own caller; the followers call the inner
//!   service themselves. A response that `Vary`s on headers outside the key
//!   (or has a `Content-Encoding`/`Content-Language`) is stored as the
//!   variant its leader's values select, and goes only to the requests that
//!   select it (RFC 9111 §4.1); followers that select another meet in one
//!   flight per variant ([`KeyExtractor::keys_header`]). Server errors and gRPC
//!   error statuses go to the flight's followers but are not stored (server
//!   errors with explicit freshness are, with
//!   [`store_server_errors`](CoalesceConfig::store_server_errors)).
//! - Every caller of a flight reads its answer as the origin sends it, from
//!   one shared copy, whatever its size;
//!   [`max_stored_bytes`](CoalesceConfig::max_stored_bytes) decides only
//!   storing. A body that fails or ends short of its `Content-Length` ends
//!   every caller's body in an error, never in a short success.
//! - A response served from storage (a hit, or a flight that found the answer
//!   stored) carries `Age` (RFC 9111 §5.1): the seconds since the origin made
//!   it, so caches downstream do not count its lifetime again. Answers a
//!   flight got from the origin carry none.
//!
//! # Failures
//! The caller that led a flight gets exactly what the inner service gave:
//! its response, its error, or its body with its error. Followers of a failed
//! flight get a response made by the layer (`502`, `500` for a panic, `504` at
//! the wait timeout) carrying a [`FlightError`] in its extensions. The service's
//! error type is the inner service's, so the layer fits `axum::Router::layer`.
//!
//! Every response carries its [`Outcome`] (hit, leader, follower, bypass,
//! pass) in its extensions; [`CoalesceLayer::stats`] counts them all.
//!
//! # Tracing
//! With DEBUG on for the target `tower_coalesce`, each keyed request runs
//! in a `coalesce.request` span (`http.request.method`,
//! `http.response.status_code`, `coalesce.outcome`, `coalesce.key`: the
//! key's [fingerprint](Key::fingerprint)) and each flight in a
//! `coalesce.flight` span, a child of its leader's request span, which
//! records how the leader was answered (`coalesce.role`) and how many
//! followers it had (`coalesce.followers`); followers' spans follow from
//! their flight's. The field names are OpenTelemetry's where one fits.
//! With DEBUG off, a request holds no span.
//!
//! # Features
//! - `redis` (default): [`RedisBackend`], shared by every instance through a
//!   Redis server or cluster. Without it the layer has its embedded
//!   [`MemoryBackend`] and none of the Redis client's dependencies.
//! - `tls-native` (formerly `tls`) or `tls-rustls`: `rediss://` URLs, through
//!   the system's TLS library or through rustls (with both on, rustls).
//! - `metrics`: the layer's series in the [`metrics`](https://docs.rs/metrics)
//!   facade, for whatever recorder the application installs, each labelled
//!   `layer` ([`CoalesceConfig::metrics_label`]) and described with its
//!   unit: every [`Stats`] counter (`coalesce_<field>_total`); responses by
//!   [`Outcome`] (`coalesce_responses_total{outcome}`); the histograms
//!   `coalesce_flight_duration_seconds` (a flight until it landed),
//!   `coalesce_follower_wait_seconds` (a follower until its answer's head),
//!   `coalesce_origin_duration_seconds` (a flight's inner call until its
//!   response head) and `coalesce_backend_call_duration_seconds{op}`
//!   (`find`, `try_lock`, `renew`, `complete`, `store`...); the gauges
//!   `coalesce_flights_in_progress`, `coalesce_near_cache_entries` and
//!   `coalesce_near_cache_bytes` ([`Store::local_size`]). A layer registers
//!   its handles on its first request and keeps them: install the recorder
//!   before that. Without the feature, none of it is compiled in.
//! - `grpc`: the [`grpc`] module, to coalesce gRPC unary calls by their
//!   message.
//! - `body-keys`: the `body_keys` module, to coalesce requests whose
//!   question is in a JSON body; `graphql` adds GraphQL routes.
//!
//! [tower]: https://docs.rs/tower

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod backend_call;
mod body;
#[cfg(feature = "body-keys")]
#[cfg_attr(docsrs, doc(cfg(feature = "body-keys")))]
pub mod body_keys;
mod breaker;
#[cfg(any(feature = "grpc", feature = "body-keys"))]
mod buffered;
mod client;
mod coalesced;
mod conditions;
mod config;
mod direct;
mod entry;
mod error;
mod flight;
mod fly;
mod freshness;
mod future;
#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
pub mod grpc;
mod key;
mod layer;
mod leader;
mod origin;
mod policy;
mod purge;
mod refresh;
mod remote;
mod remote_stream;
mod revalidate;
mod service;
mod shared;
mod shutdown;
mod stats;
mod sync;
mod tape;
mod targeted;
mod trace;
mod vary;

pub use backend::{
    Announcer, Backend, BackendError, BackendFuture, Completed, Completion, Invalidation,
    LeaseToken, Leases, LocalSize, MemoryBackend, MemoryBackendBuilder, Notice, Store, StreamEnd,
    StreamRead, Streams, TryLock, Watch,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use backend::{RedisBackend, RedisBackendBuilder};
pub use body::{BoxError, CoalesceBody};
pub use config::{CoalesceConfig, ConfigError, WaitFallback, WritePurgeFailure};
pub use entry::{DecodeError, Entry};
pub use error::{FlightError, FlightErrorKind};
pub use freshness::{Freshness, OriginFreshness};
pub use future::ResponseFuture;
pub use key::{Fingerprint, HttpKey, Key, KeyExtractor};
pub use layer::{CoalesceLayer, CoalesceLayerBuilder};
pub use purge::{
    Purge, PurgeError, PurgeErrorKind, PurgePosition, Purged, Purger, Tag, MAX_TAGS, MAX_TAG_BYTES,
};
pub use service::CoalesceService;
pub use shutdown::Shutdown;
pub use stats::{Outcome, Stats};
pub use vary::{Found, Variants};

//! Coalescing gRPC unary calls (the `grpc` feature).
//!
//! A gRPC call puts its arguments in the request body, and a
//! [`KeyExtractor`] sees the request before its body. So two layers work
//! together, outermost first:
//! 1. [`BufferLayer`] reads the whole request body of the allow-listed unary
//!    methods, up to a limit, and records it as a [`RequestMessage`]
//!    extension. Requests of other methods, larger ones and ones with
//!    trailers go on with their body as it came: nothing is lost or
//!    reordered.
//! 2. [`CoalesceLayer`](crate::CoalesceLayer) keyed by [`GrpcKey`]: the
//!    method path, the metadata that can change the answer, and the message
//!    bytes, each part framed so that none can shift into another. Calls
//!    without a [`RequestMessage`] bypass.
//!
//! gRPC calls are `POST`s, so the layer must be told to coalesce them
//! ([`CoalesceConfig::methods`](crate::CoalesceConfig::methods)); only the
//! listed methods ever get a key. List only methods whose answer depends on
//! the message and the keyed metadata alone: reads without side effects.
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_coalesce::grpc::{BufferLayer, GrpcKey};
//! use tower_coalesce::{CoalesceConfig, CoalesceLayer};
//!
//! const COALESCED: [&str; 1] = ["/catalog.Catalog/GetProduct"];
//! let coalesce = CoalesceLayer::builder(CoalesceConfig::new().methods([http::Method::POST]))
//!     .extractor(GrpcKey::new(COALESCED))
//!     .build()
//!     .expect("a valid configuration");
//! // With tonic: `Server::builder().layer(layers).add_service(...)`.
//! let layers = ServiceBuilder::new()
//!     .layer(BufferLayer::new(COALESCED))
//!     .layer(coalesce);
//! # let _ = layers;
//! ```
//!
//! Replies keep their `grpc-status` trailers for every caller; a status
//! error (trailers-only or in the trailers) reaches the whole flight and is
//! never stored; a flight that fails inside the layer answers with the
//! matching gRPC status (`INTERNAL`, `DEADLINE_EXCEEDED`, `UNAVAILABLE`).

mod buffer;

pub use buffer::{Buffer, BufferLayer, BufferedBody};

use crate::{Key, KeyExtractor};
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderName, Request};
use std::sync::Arc;

/// The whole request body of an allow-listed call (its length-prefixed gRPC
/// message or messages), as [`BufferLayer`] read it; in the request's
/// extensions.
#[derive(Debug, Clone)]
pub struct RequestMessage(pub Bytes);

/// The allow-list of method paths (`/package.Service/Method`), shared by the
/// two layers' clones.
#[derive(Debug, Clone)]
struct Methods(Arc<[Box<str>]>);

impl Methods {
    fn new<I, S>(methods: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self(methods.into_iter().map(|m| m.into().into()).collect())
    }

    fn contains(&self, path: &str) -> bool {
        self.0.iter().any(|m| &**m == path)
    }
}

/// The key of a coalesced unary call: its method path, the values of the
/// metadata that can change the answer, and its whole request message.
///
/// In the key by default:
/// - `authorization`, so that each principal has its own flight (the
///   handler may answer by who asks);
/// - `grpc-encoding`, which says how the message bytes are compressed;
/// - `grpc-accept-encoding`, which decides how the reply may be compressed.
///
/// Left out, and why:
/// - `grpc-timeout`: tonic applies each caller's deadline outside the layer,
///   so a caller gives up on its own, and the flight goes on for the rest;
/// - the authority, `user-agent`, `te`, `content-type` and tracing metadata
///   (`traceparent`, `grpc-trace-bin`...): they do not change the answer; the
///   handler sees the leader's values only;
/// - the peer address and other connection details, for the same reason.
///
/// Calls of other methods, and calls without a [`RequestMessage`] (too
/// large, or with trailers), bypass. The message is keyed by its bytes: two
/// encodings of one message (fields in another order, say) make two
/// flights, never a wrong answer.
#[derive(Debug, Clone)]
pub struct GrpcKey {
    methods: Methods,
    vary: Vec<HeaderName>,
}

impl GrpcKey {
    /// Keys the calls of `methods` (paths such as
    /// `/catalog.Catalog/GetProduct`); every other call bypasses.
    pub fn new<I, S>(methods: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            methods: Methods::new(methods),
            vary: vec![
                AUTHORIZATION,
                HeaderName::from_static("grpc-encoding"),
                HeaderName::from_static("grpc-accept-encoding"),
            ],
        }
    }

    /// Adds a metadata key whose values are part of the key, such as a
    /// tenant or locale header the handler reads.
    pub fn vary(mut self, name: HeaderName) -> Self {
        if !self.vary.contains(&name) {
            self.vary.push(name);
        }
        self
    }
}

impl<B> KeyExtractor<B> for GrpcKey {
    fn extract(&self, req: &Request<B>) -> Option<Key> {
        let path = req.uri().path();
        if !self.methods.contains(path) {
            return None;
        }
        let message = req.extensions().get::<RequestMessage>()?;
        // The resource: the method and its request message; the variant:
        // one part per metadata key, so that values cannot shift between
        // keys: ("a: x", no "b") differs from (no "a", "b: x").
        let resource = Key::from_parts([path.as_bytes(), &message.0[..]]);
        let variant = self.vary.iter().map(|name| {
            let values = req.headers().get_all(name).iter().map(|v| v.as_bytes());
            Bytes::copy_from_slice(Key::from_parts(values).resource())
        });
        Some(resource.with_variant(variant.collect::<Vec<_>>()))
    }

    /// The layer lets a call carrying `authorization` coalesce only because
    /// this says it is keyed.
    fn keys_header(&self, name: &HeaderName) -> bool {
        self.vary.contains(name)
    }
}

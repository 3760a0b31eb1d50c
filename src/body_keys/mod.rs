//! Coalescing requests whose question is in the body (the `body-keys`
//! feature; GraphQL with `graphql`).
//!
//! Searches, lookups and GraphQL queries often come as `POST`s, and a
//! [`KeyExtractor`](crate::KeyExtractor) sees a request before its body. So two layers work
//! together, outermost first, both made from one [`BodyKeys`]:
//! 1. [`BufferLayer`] ([`BodyKeys::buffer_layer`]) reads the whole body of
//!    the routes' requests, up to each route's limit, and records it as a
//!    [`RequestBody`] extension. Larger bodies, bodies with trailers and
//!    requests with a `Content-Encoding` go on as they came, nothing lost
//!    or reordered, and bypass.
//! 2. [`CoalesceLayer`](crate::CoalesceLayer) keyed by [`BodyKeys`]: for a
//!    [`Route`]'s request, the method, target, `Content-Type`, the body's
//!    canonical form and the route's headers; for any other `GET` or
//!    `HEAD`, what its [`HttpKey`] gives; other requests bypass.
//!
//! Concurrent requests with one key share one call of the inner service,
//! made with the leader's request and body (a follower's body is dropped,
//! its answer is the leader's). The flight runs detached from the leader's
//! caller: a caller that goes away, or gives up on a timeout of its own,
//! leaves the others answered. Answers are not stored unless the route is
//! [`stored`](Route::stored). The layer must be told to key the routes'
//! methods: [`BodyKeys::methods`].
//!
//! ```
//! # #[cfg(feature = "graphql")] {
//! use tower::ServiceBuilder;
//! use tower_coalesce::body_keys::{BodyKeys, Route};
//! use tower_coalesce::{CoalesceConfig, CoalesceLayer, HttpKey};
//!
//! let keys = BodyKeys::new(HttpKey::new())
//!     .route(Route::graphql("/graphql").vary(http::header::AUTHORIZATION))
//!     .route(Route::json(http::Method::POST, "/search"));
//! let coalesce = CoalesceLayer::builder(CoalesceConfig::new().methods(keys.methods()))
//!     .extractor(keys.clone())
//!     .build()
//!     .expect("a valid configuration");
//! let layers = ServiceBuilder::new()
//!     .layer(keys.buffer_layer())
//!     .layer(coalesce);
//! # let _ = layers;
//! # }
//! ```
//!
//! # Keys
//! Each part framed as [`Key::from_parts`](crate::Key::from_parts) frames them. The resource: a
//! marker, the form (canonical JSON, raw bytes, GraphQL), the target as the
//! [`HttpKey`] keys it (for GraphQL over `GET`, without its GraphQL
//! parameters), the `Content-Type` as sent, and the canonical body; the
//! variant: the route's headers, as [`HttpKey`] frames them. A body keyed
//! by its bytes never shares a key with a canonical form, and no body-keyed
//! request shares one with a request keyed by URL alone.
//!
//! # Headers
//! A request carrying a header that another route (or the [`HttpKey`])
//! keys but its own route does not bypasses. The layer asks the extractor
//! as a whole whether it keys a header ([`KeyExtractor::keys_header`]):
//! to let a credential through, and to share an answer that varies on the
//! header. This rule keeps both right per route: a credential keyed for
//! one route never rides unkeyed on another, and every request keyed by a
//! route that does not key a header lacks it. Keep the headers the routes
//! and the fallback key alike (the default: `Accept`) unless that is meant.
//!
//! [`KeyExtractor::keys_header`]: crate::KeyExtractor::keys_header

mod buffer;
#[cfg(feature = "graphql")]
mod graphql;
#[cfg(all(test, feature = "graphql"))]
mod graphql_tests;
mod json;
#[cfg(test)]
mod json_tests;
mod keys;
mod route;
#[cfg(test)]
mod tests;

pub use crate::buffered::BufferedBody;
pub use buffer::{Buffer, BufferLayer};
pub use json::canonical_json;
pub use route::Route;

use crate::HttpKey;
use bytes::Bytes;
use http::{HeaderName, Method};
use std::sync::Arc;

/// The whole request body of a route's request, as [`BufferLayer`] read
/// it; in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestBody(pub Bytes);

/// The routes, shared by the two layers' clones.
#[derive(Debug, Clone, Default)]
pub(crate) struct Routes(Arc<[Route]>);

impl Routes {
    /// The first route taking `method` to `path`.
    pub(crate) fn of(&self, method: &Method, path: &str) -> Option<&Route> {
        self.0.iter().find(|route| route.takes(method, path))
    }
}

/// The extractor of body-keyed requests: [`Route`]s keyed by their body,
/// other `GET` and `HEAD` requests by an [`HttpKey`]. See the
/// [module](self) documentation.
#[derive(Debug, Clone)]
pub struct BodyKeys {
    routes: Routes,
    fallback: HttpKey,
    /// Every header a route or the fallback keys.
    keyed: Arc<[HeaderName]>,
}

impl BodyKeys {
    /// Keys `GET` and `HEAD` requests no route takes with `fallback`, and
    /// no route yet.
    pub fn new(fallback: HttpKey) -> Self {
        let keyed = fallback.varied().into();
        Self {
            routes: Routes::default(),
            fallback,
            keyed,
        }
    }

    /// Adds a route; a request is keyed by the first route that takes its
    /// method and path.
    pub fn route(mut self, route: Route) -> Self {
        let mut routes = self.routes.0.to_vec();
        let mut keyed = self.keyed.to_vec();
        for name in &route.vary {
            if !keyed.contains(name) {
                keyed.push(name.clone());
            }
        }
        routes.push(route);
        self.routes = Routes(routes.into());
        self.keyed = keyed.into();
        self
    }

    /// The layer that reads the routes' bodies, to go outside the
    /// coalescing layer (it knows the routes added so far).
    pub fn buffer_layer(&self) -> BufferLayer {
        BufferLayer::new(self.routes.clone())
    }

    /// The methods for [`CoalesceConfig::methods`](crate::CoalesceConfig::methods):
    /// `GET`, `HEAD` and the routes'.
    pub fn methods(&self) -> Vec<Method> {
        let mut methods = vec![Method::GET, Method::HEAD];
        for method in self.routes.0.iter().flat_map(|r| &r.methods) {
            if !methods.contains(method) {
                methods.push(method.clone());
            }
        }
        methods
    }
}

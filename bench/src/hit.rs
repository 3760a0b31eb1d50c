//! The request, origin and layer that `benches/hit_path.rs` and
//! `bin/hit_probe.rs` measure a cached hit with, in one place so that the
//! wall-clock and the instruction figures measure the same thing.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Empty, Full};
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;
use tower::Service;
use tower_coalesce::{CoalesceConfig, CoalesceLayer};

/// A `GET` with one `Accept` header, as an API client sends it.
pub fn request() -> Request<Empty<Bytes>> {
    Request::get("http://api.example/products/7?lang=en")
        .header("accept", "application/json")
        .body(Empty::new())
        .unwrap()
}

/// The bare service: 1 KiB of JSON, at once.
pub fn origin() -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>>,
> + Clone {
    let body = Bytes::from(vec![b'x'; 1024]);
    tower::service_fn(move |_req: Request<Empty<Bytes>>| {
        let body = body.clone();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .unwrap(),
            )
        }
    })
}

/// The layer in front of it: answers kept an hour, nothing else set.
pub fn layer() -> CoalesceLayer {
    CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(3600)))
}

//! `coalesce-proxy`: a coalescing reverse proxy. Put it in front of any
//! HTTP service (Go, Java, anything) and identical concurrent `GET`/`HEAD`
//! requests cost that service one call — in one instance, and across every
//! instance that shares a Redis.
//!
//! Clients speak HTTP/1.1 or HTTP/2 with prior knowledge (h2c) on the one
//! listener; a burst multiplexed on one HTTP/2 connection coalesces as one
//! spread over many, and a body that fails mid-way resets its stream. The
//! upstream is spoken to in HTTP/1.1, in HTTP/2 with `--upstream-http2`
//! (h2c), or over TLS for an `https://` upstream (rustls; ALPN offers h2
//! and http/1.1; the certificate verified against the system's roots or
//! `--upstream-ca FILE`). With `--tls-cert FILE --tls-key FILE` the
//! listener speaks TLS (HTTP/2 and HTTP/1.1 by ALPN); `SIGHUP` reads the
//! certificate and key again, for new connections, without dropping open
//! ones.
//!
//! ```text
//! cargo install --path proxy
//! coalesce-proxy --upstream http://127.0.0.1:3000 [OPTIONS]
//! coalesce-proxy --help
//! ```
//!
//! `SIGTERM` (or Ctrl-C) shuts it down gracefully: it stops accepting
//! connections, lets requests in flight finish (up to `--shutdown-grace-ms`),
//! then [shuts the layer down](tower_coalesce::CoalesceLayer::shutdown), so
//! that every Redis lease it still holds is released and other instances take
//! over at once instead of waiting the lease out.
//!
//! Try it in front of the `axum_server` example (a product API on port 3000
//! whose query takes `--query-ms`), or any other server:
//!
//! ```text
//! cargo run --example axum_server -- --query-ms 500 &
//! cargo run --release -p coalesce-proxy -- --upstream http://127.0.0.1:3000 &
//!
//! # a burst of 50 identical requests through the proxy
//! seq 50 | xargs -P 50 -I{} curl -s -o /dev/null -D - \
//!     http://127.0.0.1:8080/products/7 | grep -i '^x-coalesce' | sort | uniq -c
//! ```
//! Expect one `x-coalesce: leader` and the rest `follower`: the proxy sent
//! the upstream one request (`python3 -m http.server 3000` as the upstream
//! shows it in its log, one line per request it received). With
//! `--ttl-ms 2000` requests within 2 s of the answer are `hit`s and reach no
//! upstream at all. `POST` and other unsafe methods, requests with
//! `Authorization` or `Cookie`, and answers with `Set-Cookie` are never
//! shared (`bypass`, or `pass`). Start more proxies
//! with the same `--redis redis://127.0.0.1:6379/ --ttl-ms 2000
//! --public-host shop.example` and a burst spread over all of them still
//! costs one upstream call; proxies of other sites on that Redis take a
//! `--namespace` of their own. At shutdown it prints the layer's counters.
//!
//! What the proxy does to messages:
//! - Hop-by-hop headers (RFC 9110 §7.6.1) are removed in both directions:
//!   `Connection` and every header it names, `Keep-Alive`, `Proxy-Connection`,
//!   `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`
//!   and `Proxy-Authorization` (the credentials are for this proxy, which asks
//!   for none). A request loses them before it is keyed: what the upstream
//!   is not told is not in the key (so `Proxy-Authorization` does not keep
//!   an answer private either).
//! - A protocol upgrade (WebSocket: an HTTP/1.1 request with `Connection:
//!   upgrade` and `Upgrade`) goes past the layer to the upstream, with its
//!   `Upgrade`, over HTTP/1.1; on `101 Switching Protocols` the two
//!   connections are joined byte for byte until either closes, one tunnel
//!   per client.
//! - Requests get `Via: 1.1 tower-coalesce`, which RFC 9110 §7.6.3 requires of
//!   a gateway.
//! - Every request header that reaches the upstream is in the key, or is set
//!   by the proxy to the same value for every request with that key — or the
//!   request is one whose answer goes to its own caller alone. So:
//!   - `X-Forwarded-*`, `Forwarded` and `X-Real-IP` sent by clients are
//!     dropped (anyone can send them), unless `--trust-forwarded` says a
//!     trusted load balancer in front sets them; then `X-Forwarded-Host`,
//!     `-Proto` and `-Port` are keyed.
//!   - A request whose target is in absolute form (`GET http://host/path`)
//!     becomes the origin-form request for that host before it is keyed:
//!     the target's authority replaces any `Host` it carries (RFC 9112
//!     §3.2.2), so the key and the upstream's `X-Forwarded-Host` name the
//!     same host, and it shares its key with that host's other requests.
//!   - `Host` becomes the upstream's authority, which is in every key: so
//!     proxies of different upstreams sharing a Redis never share answers,
//!     even when reached by one name. `X-Forwarded-Host` is the
//!     `--public-host` for every request, and that name is then keyed in
//!     place of the client's `Host`, so that instances listening on
//!     different addresses share keys; without `--public-host` it is the
//!     client's `Host`, which is then in the key.
//!   - The client's address goes in `X-Forwarded-For` only on requests whose
//!     answer the layer does not share (bypass and pass-through): the
//!     request that leads a flight carries no per-client value.
//! - Only the request that leads a flight is rewritten for the upstream; hits
//!   and followers skip that work.
//! - Bodies stream in both directions: every caller of a flight reads the
//!   upstream's answer as it arrives; answers up to the layer's
//!   `max_stored_bytes` (1 MiB) are stored.
//! - An upstream that cannot be reached gives `502 Bad Gateway`.
//!
//! Coalescing shares one upstream answer among requests with the same key
//! (method class, upstream, path and query, `Accept*` headers, and the
//! forwarding headers above): an upstream whose answer depends on other request
//! headers must say so with `Vary` or `Cache-Control: private`, which keeps
//! the answer to its own caller.

mod access;
mod admin;
mod args;
mod build;
mod cli;
mod config;
mod conn;
mod forward;
mod key;
mod listen;
mod meter;
mod purge;
mod routes;
mod summary;
mod tls;
mod upstream;

pub use access::TARGET as ACCESS_TARGET;
pub use admin::{healthcheck, install_metrics, serve_admin, Admin};
pub use args::Args;
pub use build::{build, layer, Built};
pub use conn::ConnectionOptions;
pub use forward::{strip_hop_by_hop, Forward, Forwarding, Sent, UpstreamBody};
pub use key::{proxy_key, ProxyKey};
pub use listen::{serve, serve_with, ListenOptions};
pub use routes::{BodySpec, Routes};
pub use tls::Tls;
pub use upstream::UpstreamOptions;

use bytes::Bytes;
use forward::{bad_request, forwardable_path, into_origin_form, upgrade_of, BAD_TARGET};
use futures_util::future::{self, TryFutureExt};
use http::{Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use tower::{Layer, Service};
use tower_coalesce::body_keys::Buffer;
use tower_coalesce::{CoalesceBody, CoalesceLayer, CoalesceService, KeyExtractor};
use upstream::Upstream;

/// A body the proxy makes itself, as a [`ProxyBody`].
pub(crate) fn own_body(body: Full<Bytes>) -> ProxyBody {
    Either::Right(Either::Right(body))
}

/// The body of every response the proxy sends.
pub type ProxyBody = Either<CoalesceBody<UpstreamBody>, UpstreamBody>;

/// The coalescing layer of a proxy: keyed by [`ProxyKey`].
pub type ProxyLayer = CoalesceLayer<ProxyKey>;

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The coalescing service of one upstream, behind the reading of the
/// bodies its body-keyed routes key.
type Coalescing = Buffer<CoalesceService<Forward, ProxyKey>>;

type CoalesceFuture = <Coalescing as Service<Request<Incoming>>>::Future;

/// Turns the layer's response into the proxy's.
type IntoProxyBody = fn(Response<CoalesceBody<UpstreamBody>>) -> Response<ProxyBody>;

/// The whole proxy for one client connection: sends each request through
/// the coalescing layer to [`Forward`], which prepares it for the upstream.
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: Coalescing,
    layer: ProxyLayer,
    forward: Forward,
    purge: Option<purge::PurgeEndpoint>,
}

/// A proxy to `upstream` (`http://host:port`) through `layer`, which must
/// key by [`proxy_key`] of the same `upstream` and `forwarding` (as
/// [`layer`] does).
pub fn proxy_service(
    upstream: Uri,
    forwarding: Forwarding,
    layer: ProxyLayer,
) -> Result<Proxy, String> {
    proxy_service_with(upstream, forwarding, layer, &UpstreamOptions::default())
}

/// As [`proxy_service`], speaking to the upstream as `options` say
/// (`https://` upstreams, HTTP/2).
pub fn proxy_service_with(
    upstream: Uri,
    forwarding: Forwarding,
    layer: ProxyLayer,
    options: &UpstreamOptions,
) -> Result<Proxy, String> {
    let shown = upstream.clone();
    let upstream = Upstream::new(&upstream).map_err(|e| format!("upstream {shown}: {e}"))?;
    let forward = Forward::new(upstream, forwarding, options)
        .map_err(|e| format!("upstream {shown}: {e}"))?;
    Ok(Proxy {
        inner: coalescing(&layer, forward.clone()),
        layer,
        forward,
        purge: None,
    })
}

/// `forward` under `layer`, behind the reading of the bodies its key needs.
fn coalescing(layer: &ProxyLayer, forward: Forward) -> Coalescing {
    layer
        .key_extractor()
        .buffer_layer()
        .layer(layer.layer(forward))
}

impl Proxy {
    /// The same proxy, for requests that come from `addr` (appended to
    /// `X-Forwarded-For`).
    pub fn for_client(&self, addr: SocketAddr) -> Self {
        let forward = self.forward.for_client(addr);
        Self {
            inner: coalescing(&self.layer, forward.clone()),
            layer: self.layer.clone(),
            forward,
            purge: self.purge.clone(),
        }
    }

    /// The same proxy, answering `PURGE` requests that carry
    /// `Authorization: Bearer <token>` itself (see `--purge-token-file`):
    /// with `X-Purge-Tag: <tags>` it purges those tags, without it the
    /// request's URL, in every instance sharing the backend.
    pub fn with_purge_token(mut self, token: &str) -> Self {
        self.purge = Some(purge::PurgeEndpoint::new(token, self.layer.purger()));
        self
    }
}

impl Service<Request<Incoming>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = future::Either<
        future::Either<
            future::Ready<Result<Response<ProxyBody>, Infallible>>,
            future::BoxFuture<'static, Result<Response<ProxyBody>, Infallible>>,
        >,
        future::MapOk<CoalesceFuture, IntoProxyBody>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        // Checked before the layer: a target with no path has no key to
        // coalesce by and nothing to forward.
        if forwardable_path(req.uri()).is_none() {
            let res = bad_request(BAD_TARGET).map(own_body);
            return future::Either::Left(future::Either::Left(future::ready(Ok(res))));
        }
        // Before the layer keys the request too: keyed by the target's
        // authority, it must not reach the upstream as a request for the
        // `Host` it also carries.
        if let Err(message) = into_origin_form(&mut req) {
            let res = bad_request(message).map(own_body);
            return future::Either::Left(future::Either::Left(future::ready(Ok(res))));
        }
        // A protocol upgrade (WebSocket) is its client's alone: past the
        // layer, straight to the upstream.
        if upgrade_of(&req).is_some() {
            let tunnel = self.forward.tunnel(req);
            let answer = async move { Ok(tunnel.await.map(Either::Right)) };
            return future::Either::Left(future::Either::Right(Box::pin(answer)));
        }
        // Before the layer keys the request: a keyed header that
        // `Connection` names never reaches the upstream, so a key holding
        // it would name an answer made without it.
        strip_hop_by_hop(req.headers_mut());
        // The access log names the key as the layer will make it.
        if let Some(slot) = req.extensions().get::<access::KeySlot>() {
            if let Some(key) = KeyExtractor::<Incoming>::extract(self.layer.key_extractor(), &req) {
                slot.fill(&key);
            }
        }
        if let (Some(endpoint), true) = (&self.purge, purge::is_purge(&req)) {
            let endpoint = endpoint.clone();
            let (head, _body) = req.into_parts();
            let answer = async move { Ok(endpoint.answer(head).await) };
            return future::Either::Left(future::Either::Right(Box::pin(answer)));
        }
        let into_proxy_body: IntoProxyBody = |res| res.map(Either::Left);
        future::Either::Right(self.inner.call(req).map_ok(into_proxy_body))
    }
}

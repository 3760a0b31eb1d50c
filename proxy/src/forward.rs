//! What the proxy does to each request on its way to the upstream, and to
//! each answer on its way back: the service under the coalescing layer.

pub(crate) use crate::upstream::{Connector, Upstream, UpstreamOptions};

use crate::meter::{Ended, Request as Kind, UpstreamMeter};
use bytes::Bytes;
use futures_util::future;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::Service;
use tower_coalesce::body_keys::BufferedBody;
use tower_coalesce::Outcome;

mod failed;
mod tunnel;

use failed::{bad_gateway, cut_off, error_chain, gateway_timeout, too_large};

pub(crate) use tunnel::{upgrade_of, ConnectionPlace};

/// What the proxy does with the forwarding headers (`X-Forwarded-*`,
/// `Forwarded`): they reach the upstream and can shape its answer, so each
/// is either in the key or the same for every request with that key.
#[derive(Debug, Clone, Default)]
pub struct Forwarding {
    /// The host name clients use: sent as `X-Forwarded-Host` on every
    /// request, and keyed in place of the client's `Host`.
    pub public_host: Option<HeaderValue>,
    /// Keep the forwarding headers clients send (a trusted load balancer
    /// sets them); by default they are dropped.
    pub trust: bool,
}

/// The forwarding headers a client may send, dropped unless trusted.
const FORWARDING: [&str; 6] = [
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "forwarded",
    "x-real-ip",
];

/// The trusted forwarding headers that are the same for every request of a
/// key only because they are in it.
pub(crate) const KEYED_FORWARDING: [&str; 3] =
    ["x-forwarded-host", "x-forwarded-proto", "x-forwarded-port"];

/// The trusted forwarding headers that name the client: they reach the
/// upstream only on requests whose answer is not shared.
const PER_CLIENT: [&str; 3] = ["x-forwarded-for", "forwarded", "x-real-ip"];

/// The body of a request the proxy sends on: the client's, read whole
/// first on the routes keyed by their bodies.
pub type Sent = BufferedBody<Incoming>;

/// The body of a response from the upstream, or of one the proxy made itself.
pub type UpstreamBody = Either<Incoming, Full<Bytes>>;

/// Prepares each request for the upstream and sends it: the service under
/// the layer. Preparing here, behind the layer, means a hit never pays for
/// it; only the one request of a flight that reaches the upstream does.
/// It never fails; an upstream it cannot reach is a `502` answer, which the
/// layer gives to every request of the flight (no stampede on a dead
/// upstream) and never stores.
#[derive(Debug, Clone)]
pub struct Forward {
    /// What every clone shares: cloned per request, the service must be
    /// cheap to clone.
    to: Arc<Upstreams>,
    /// The address of the client whose connection this serves.
    peer: Option<SocketAddr>,
}

/// The upstream and how to reach it.
#[derive(Debug)]
struct Upstreams {
    client: Client<Connector, Limited<Sent>>,
    /// HTTP/1.1 alone, for protocol upgrades.
    tunnels: Client<Connector, Limited<Incoming>>,
    timeout: Duration,
    max_request_body: u64,
    upstream: Upstream,
    forwarding: Forwarding,
    meter: UpstreamMeter,
}

impl Upstreams {
    /// The proxy's own answer to a request to `target` that got none from
    /// the upstream after `took`: it failed with `error`, or (`None`) the
    /// timeout passed. Recorded and logged.
    fn unanswered(
        &self,
        kind: Kind,
        target: &Uri,
        error: Option<&hyper_util::client::legacy::Error>,
        took: Duration,
    ) -> Response<UpstreamBody> {
        match error {
            Some(error) => {
                self.meter.ended(kind, Ended::Failed, took);
                eprintln!("proxy: {target}: {}", error_chain(error));
                bad_gateway()
            }
            None => {
                self.meter.ended(kind, Ended::TimedOut, took);
                eprintln!("proxy: {target}: no answer within {:?}", self.timeout);
                gateway_timeout()
            }
        }
    }
}

impl Forward {
    pub(crate) fn new(
        upstream: Upstream,
        forwarding: Forwarding,
        options: &UpstreamOptions,
    ) -> Result<Self, String> {
        let client = upstream.client(options, false)?;
        let tunnels = upstream.client(options, true)?;
        let to = Upstreams {
            client,
            tunnels,
            timeout: options.timeout,
            max_request_body: options.max_request_body,
            upstream,
            forwarding,
            meter: UpstreamMeter::new(),
        };
        Ok(Self {
            to: Arc::new(to),
            peer: None,
        })
    }

    /// The same service, for requests from `addr`.
    pub(crate) fn for_client(&self, addr: SocketAddr) -> Self {
        Self {
            peer: Some(addr),
            ..self.clone()
        }
    }

    /// Rewrites a request from the client into the request for the upstream,
    /// or says why it cannot be forwarded.
    fn prepare<B>(&self, req: &mut Request<B>) -> Result<(), &'static str> {
        let path = match forwardable_path(req.uri()) {
            Some(pq) => pq.clone(),
            None => return Err(BAD_TARGET),
        };
        let via = HeaderValue::from_static(if req.version() == Version::HTTP_10 {
            "1.0 tower-coalesce"
        } else {
            "1.1 tower-coalesce"
        });
        let original_host = req
            .headers()
            .get(header::HOST)
            .cloned()
            .or_else(|| req.uri().authority().and_then(|a| a.as_str().parse().ok()));

        // The layer marks the request that leads a flight: its answer may
        // go to every request with its key.
        let shared = req.extensions().get::<Outcome>() == Some(&Outcome::Leader);
        let forwarding = &self.to.forwarding;
        let headers = req.headers_mut();
        // `Proxy` strips them before the layer keys the request; again
        // here so that nothing else that sends through `Forward` lets them
        // through.
        strip_hop_by_hop(headers);
        headers.append(header::VIA, via);
        if !forwarding.trust {
            for name in FORWARDING {
                headers.remove(name);
            }
        } else if shared {
            for name in PER_CLIENT {
                headers.remove(name);
            }
        }
        if let (Some(addr), false) = (self.peer, shared) {
            append_forwarded_for(headers, addr);
        }
        let forwarded_host = HeaderName::from_static("x-forwarded-host");
        match (&forwarding.public_host, original_host) {
            (Some(public), _) => {
                headers.insert(forwarded_host, public.clone());
            }
            (None, Some(host)) => {
                headers.entry(forwarded_host).or_insert(host);
            }
            (None, None) => {}
        }
        headers.insert(header::HOST, self.to.upstream.host.clone());

        *req.uri_mut() = Uri::builder()
            .scheme(self.to.upstream.scheme.clone())
            .authority(self.to.upstream.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| "bad request: the target cannot be forwarded\n")?;
        // This is a new hop, spoken in HTTP/1.1 whatever the client spoke.
        *req.version_mut() = Version::HTTP_11;
        Ok(())
    }
}

impl Service<Request<Sent>> for Forward {
    type Response = Response<UpstreamBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The client queues on its own pool; it is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Sent>) -> Self::Future {
        let kind = match req.extensions().get::<Outcome>() {
            Some(Outcome::Leader) => Kind::Flight,
            _ => Kind::Direct,
        };
        if let Err(message) = self.prepare(&mut req) {
            return Box::pin(future::ready(Ok(bad_request(message).map(Either::Right))));
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.to.max_request_body) {
            return Box::pin(future::ready(Ok(too_large())));
        }
        let target = req.uri().clone();
        let limit = usize::try_from(self.to.max_request_body).unwrap_or(usize::MAX);
        let response = self
            .to
            .client
            .request(req.map(|body| Limited::new(body, limit)));
        let to = self.to.clone();
        Box::pin(async move {
            let start = Instant::now();
            let answered = tokio::time::timeout(to.timeout, response).await;
            let took = start.elapsed();
            match answered {
                Ok(Ok(res)) => {
                    to.meter.ended(kind, Ended::Answered(res.status()), took);
                    let (mut head, body) = res.into_parts();
                    strip_hop_by_hop(&mut head.headers);
                    Ok(Response::from_parts(head, Either::Left(body)))
                }
                Ok(Err(error)) if cut_off(&error) => Ok(too_large()),
                Ok(Err(error)) => Ok(to.unanswered(kind, &target, Some(&error), took)),
                Err(_) => Ok(to.unanswered(kind, &target, None, took)),
            }
        })
    }
}

/// The message for a target the proxy cannot forward.
pub(crate) const BAD_TARGET: &str = "bad request: the target must be a path\n";

/// The path and query a request keeps upstream: origin-form `/path?q` and
/// absolute-form `http://host/path?q` have one; CONNECT and `OPTIONS *` name
/// no path.
pub(crate) fn forwardable_path(uri: &Uri) -> Option<&http::uri::PathAndQuery> {
    uri.path_and_query()
        .filter(|pq| pq.as_str().starts_with('/'))
}

/// Rewrites an absolute-form request (`GET http://host/path`) into origin
/// form, its `Host` replaced by the target's authority: RFC 9112 §3.2.2
/// has that authority win over any `Host` received, and the key, the
/// `X-Forwarded-Host` the upstream is told and purges must all see that one
/// host. Returns why not when the target has no path or its authority
/// makes no `Host`.
pub(crate) fn into_origin_form<B>(req: &mut Request<B>) -> Result<(), &'static str> {
    let Some(authority) = req.uri().authority() else {
        return Ok(());
    };
    // Userinfo is no part of a host (RFC 9110 §4.2.4).
    let host = authority.as_str().rsplit('@').next().unwrap_or_default();
    let host = HeaderValue::from_str(host)
        .map_err(|_| "bad request: the target's authority is not a host\n")?;
    let path = forwardable_path(req.uri()).ok_or(BAD_TARGET)?.clone();
    req.headers_mut().insert(header::HOST, host);
    *req.uri_mut() = Uri::from(path);
    Ok(())
}

pub(crate) fn bad_request(message: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::from(message));
    *res.status_mut() = StatusCode::BAD_REQUEST;
    res
}

/// Headers that are about one connection rather than the message, besides
/// those named by `Connection` (RFC 9110 §7.6.1, with the historical
/// `Keep-Alive` and `Proxy-Connection`).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers, in either direction.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one look at the names present says so,
    // where removing each by name would hash every one of them.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    // Collected first: the names are read from `Connection`, removed below.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
}

/// Appends the client's address to `X-Forwarded-For`, as one comma-joined
/// value: some readers only look at the first field line.
pub(crate) fn append_forwarded_for(headers: &mut HeaderMap, addr: SocketAddr) {
    let name = HeaderName::from_static("x-forwarded-for");
    let ip = addr.ip().to_canonical().to_string();
    let prior: Vec<&str> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if prior.is_empty() {
        ip
    } else {
        format!("{}, {ip}", prior.join(", "))
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(name, value);
    }
}

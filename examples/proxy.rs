//! A coalescing reverse proxy: put it in front of any HTTP/1.1 service (Go,
//! Java, anything) and identical concurrent `GET`/`HEAD` requests cost that
//! service one call.
//!
//! ```text
//! cargo run --example proxy -- --upstream http://127.0.0.1:3000 [OPTIONS]
//!
//!   --listen ADDR    where to listen (default 127.0.0.1:8080)
//!   --upstream URL   the service behind the proxy, http://host:port (required)
//!   --redis URL      share flights with every proxy using this Redis
//!   --ttl-ms N       keep answers for N ms (default 0: coalesce only)
//!   --lease-ms N     with --redis: the flight lease, N ms (default 10000)
//!   --public-host H  the one public host name clients use (X-Forwarded-Host)
//!   --trust-forwarded  keep the X-Forwarded-*/Forwarded headers clients send
//!   --header NAME    cache-status response header (default x-coalesce)
//!   --no-header      write no cache-status header
//! ```
//!
//! Try it in front of the `axum_server` example (a product API on port 3000
//! whose query takes `--query-ms`), or any other server:
//!
//! ```text
//! cargo run --example axum_server -- --query-ms 500 &
//! cargo run --example proxy -- --upstream http://127.0.0.1:3000 &
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
//! `Authorization`, `Proxy-Authorization` or `Cookie`, and answers with
//! `Set-Cookie` are never shared (`bypass`, or `pass`). Start more proxies
//! with the same `--redis redis://127.0.0.1:6379/ --ttl-ms 2000
//! --public-host shop.example` and a burst spread over all of them still
//! costs one upstream call. Ctrl-C prints the layer's counters.
//!
//! What the proxy does to messages:
//! - Hop-by-hop headers (RFC 9110 §7.6.1) are removed in both directions:
//!   `Connection` and every header it names, `Keep-Alive`, `Proxy-Connection`,
//!   `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`
//!   and `Proxy-Authorization` (the credentials are for this proxy, which asks
//!   for none). So protocol upgrades (WebSocket) are not proxied.
//! - Requests get `Via: 1.1 tower-coalesce`, which RFC 9110 §7.6.3 requires of
//!   a gateway.
//! - Every request header that reaches the upstream is in the key, or is set
//!   by the proxy to the same value for every request with that key — or the
//!   request is one whose answer goes to its own caller alone. So:
//!   - `X-Forwarded-*`, `Forwarded` and `X-Real-IP` sent by clients are
//!     dropped (anyone can send them), unless `--trust-forwarded` says a
//!     trusted load balancer in front sets them; then `X-Forwarded-Host`,
//!     `-Proto` and `-Port` are keyed.
//!   - `Host` becomes the upstream's authority. `X-Forwarded-Host` is the
//!     `--public-host` for every request, and requests are then keyed
//!     without their authority, so that instances listening on different
//!     addresses share keys; without `--public-host` it is the client's
//!     `Host`, which is then in the key.
//!   - The client's address goes in `X-Forwarded-For` only on requests whose
//!     answer the layer does not share (bypass and pass-through): the
//!     request that leads a flight carries no per-client value.
//! - Only the request that leads a flight is rewritten for the upstream; hits
//!   and followers skip that work.
//! - Bodies stream in both directions; only answers up to the layer's
//!   `max_body_bytes` (1 MiB) are buffered, to be shared.
//! - An upstream that cannot be reached gives `502 Bad Gateway`.
//!
//! Coalescing shares one upstream answer among requests with the same key
//! (method class, path and query, `Accept*` headers, and the forwarding
//! headers above): an upstream whose answer depends on other request
//! headers must say so with `Vary` or `Cache-Control: private`, which keeps
//! the answer to its own caller.

use bytes::Bytes;
use futures_util::future::{self, TryFutureExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tower::{Layer, Service, ServiceExt};
use tower_coalesce::{
    CoalesceBody, CoalesceConfig, CoalesceLayer, CoalesceService, HttpKey, Outcome, RedisBackend,
};

/// The command-line help.
pub const USAGE: &str = "\
usage: proxy --upstream URL [--listen ADDR] [--redis URL] [--ttl-ms N] [--lease-ms N]
             [--public-host HOST] [--trust-forwarded] [--header NAME | --no-header]

  --listen ADDR    where to listen, IP:PORT (default 127.0.0.1:8080)
  --upstream URL   the service behind the proxy, http://host:port (required)
  --redis URL      share flights with every proxy using this Redis (needs --ttl-ms > 0)
  --ttl-ms N       keep answers for N milliseconds (default 0: coalesce only)
  --lease-ms N     with --redis: how long a flight's lease lasts unrenewed, so how
                   soon others take over from an instance that died (default 10000)
  --public-host H  the host name clients use, sent as X-Forwarded-Host on every
                   request; keys then leave the client's Host out, so proxies
                   reached by different addresses share them
  --trust-forwarded
                   keep the X-Forwarded-*/Forwarded headers clients send (only
                   behind a load balancer that sets them); default: dropped
  --header NAME    cache-status response header (default x-coalesce)
  --no-header      write no cache-status header";

/// The proxy's settings, from the command line.
#[derive(Debug, Clone)]
pub struct Args {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The service behind the proxy.
    pub upstream: Uri,
    /// The Redis shared with other instances, if any.
    pub redis: Option<String>,
    /// How long answers are kept; zero only coalesces concurrent requests.
    pub ttl: Duration,
    /// The flight lease, if not the layer's default.
    pub lease: Option<Duration>,
    /// The cache-status header, or `None` for none.
    pub header: Option<HeaderName>,
    /// What the proxy does with forwarding headers.
    pub forwarding: Forwarding,
}

/// What the proxy does with the forwarding headers (`X-Forwarded-*`,
/// `Forwarded`): they reach the upstream and can shape its answer, so each
/// is either in the key or the same for every request with that key.
#[derive(Debug, Clone, Default)]
pub struct Forwarding {
    /// The host name clients use: sent as `X-Forwarded-Host` on every
    /// request, and the client's `Host` left out of the key.
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
const KEYED_FORWARDING: [&str; 3] = ["x-forwarded-host", "x-forwarded-proto", "x-forwarded-port"];

/// The trusted forwarding headers that name the client: they reach the
/// upstream only on requests whose answer is not shared.
const PER_CLIENT: [&str; 3] = ["x-forwarded-for", "forwarded", "x-real-ip"];

impl Args {
    /// Parses the arguments that follow the program name.
    pub fn parse<I>(args: I) -> Result<Self, String>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let mut listen = SocketAddr::from(([127, 0, 0, 1], 8080));
        let mut upstream = None;
        let mut redis = None;
        let mut ttl = Duration::ZERO;
        let mut lease = None;
        let mut header = Some(HeaderName::from_static("x-coalesce"));
        let (mut named_header, mut no_header) = (false, false);
        let mut forwarding = Forwarding::default();

        let mut args = args.into_iter().map(Into::into);
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--listen" => {
                    let v = value()?;
                    listen = v
                        .parse()
                        .map_err(|_| format!("--listen {v:?}: expected IP:PORT"))?;
                }
                "--upstream" => {
                    let v = value()?;
                    let uri: Uri = v.parse().map_err(|e| format!("--upstream {v:?}: {e}"))?;
                    Upstream::new(&uri).map_err(|e| format!("--upstream {v:?}: {e}"))?;
                    upstream = Some(uri);
                }
                "--redis" => redis = Some(value()?),
                "--ttl-ms" => {
                    let v = value()?;
                    let ms: u64 = v
                        .parse()
                        .map_err(|_| format!("--ttl-ms {v:?}: expected milliseconds"))?;
                    ttl = Duration::from_millis(ms);
                }
                "--lease-ms" => {
                    let v = value()?;
                    let ms: u64 = v
                        .parse()
                        .map_err(|_| format!("--lease-ms {v:?}: expected milliseconds"))?;
                    lease = Some(Duration::from_millis(ms));
                }
                "--header" => {
                    let v = value()?;
                    let name = HeaderName::from_bytes(v.as_bytes())
                        .map_err(|_| format!("--header {v:?}: not a header name"))?;
                    header = Some(name);
                    named_header = true;
                }
                "--no-header" => {
                    header = None;
                    no_header = true;
                }
                "--public-host" => {
                    let v = value()?;
                    let host = v
                        .parse::<Authority>()
                        .ok()
                        .filter(|a| !a.as_str().contains('@'))
                        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                        .ok_or_else(|| format!("--public-host {v:?}: expected a host name"))?;
                    forwarding.public_host = Some(host);
                }
                "--trust-forwarded" => forwarding.trust = true,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if named_header && no_header {
            return Err("--header and --no-header contradict each other".into());
        }
        let upstream = upstream.ok_or("--upstream is required")?;
        Ok(Self {
            listen,
            upstream,
            redis,
            ttl,
            lease,
            header,
            forwarding,
        })
    }
}

/// The coalescing layer the arguments describe: connects to Redis if asked.
pub async fn layer(args: &Args) -> Result<CoalesceLayer, String> {
    let mut config = CoalesceConfig::new()
        .ttl(args.ttl)
        .outcome_header_name(args.header.clone());
    if let Some(lease) = args.lease {
        config = config.lease(lease);
    }
    if let Some(url) = &args.redis {
        let backend = RedisBackend::connect(url.clone())
            .await
            .map_err(|e| format!("--redis {}: {e}", redact(url)))?;
        config = config.backend(backend);
    }
    CoalesceLayer::builder(config)
        .extractor(proxy_key(&args.forwarding))
        .build()
        .map_err(|e| e.to_string())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Where requests go: the upstream's scheme and authority, and the `Host`
/// header that names it.
#[derive(Debug, Clone)]
struct Upstream {
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
}

impl Upstream {
    fn new(uri: &Uri) -> Result<Self, String> {
        let scheme = match uri.scheme() {
            Some(s) if *s == Scheme::HTTP => s.clone(),
            // The client below speaks plain HTTP only; TLS to the upstream
            // would need a TLS connector.
            Some(s) => return Err(format!("scheme {s} is not supported, only http")),
            None => return Err("expected http://host:port".into()),
        };
        let authority = uri.authority().ok_or("expected http://host:port")?.clone();
        if uri.path() != "/" || uri.query().is_some() {
            return Err("requests keep their own path; give no path or query".into());
        }
        if authority.as_str().contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
        Ok(Self {
            scheme,
            authority,
            host,
        })
    }
}

/// The body of a response from the upstream, or of one the proxy made itself.
pub type UpstreamBody = Either<Incoming, Full<Bytes>>;

/// The body of every response the proxy sends.
pub type ProxyBody = Either<CoalesceBody<UpstreamBody>, Full<Bytes>>;

/// Prepares each request for the upstream and sends it: the service under
/// the layer. Preparing here, behind the layer, means a hit never pays for
/// it; only the one request of a flight that reaches the upstream does.
/// It never fails; an upstream it cannot reach is a `502` answer, which the
/// layer gives to every request of the flight (no stampede on a dead
/// upstream) and never stores.
#[derive(Debug, Clone)]
pub struct Forward {
    client: Client<HttpConnector, Incoming>,
    upstream: Arc<Upstream>,
    forwarding: Arc<Forwarding>,
    /// The address of the client whose connection this serves.
    peer: Option<SocketAddr>,
}

impl Forward {
    fn new(upstream: Upstream, forwarding: Forwarding) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // A black-holed upstream would otherwise hold requests for the
        // operating system's connect timeout, minutes on Linux.
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self {
            client,
            upstream: Arc::new(upstream),
            forwarding: Arc::new(forwarding),
            peer: None,
        }
    }

    /// Rewrites a request from the client into the request for the upstream,
    /// or says why it cannot be forwarded.
    fn prepare(&self, req: &mut Request<Incoming>) -> Result<(), &'static str> {
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
        let forwarding = &*self.forwarding;
        let headers = req.headers_mut();
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
        headers.insert(header::HOST, self.upstream.host.clone());

        *req.uri_mut() = Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(self.upstream.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| "bad request: the target cannot be forwarded\n")?;
        // This is a new hop, spoken in HTTP/1.1 whatever the client spoke.
        *req.version_mut() = Version::HTTP_11;
        Ok(())
    }
}

impl Service<Request<Incoming>> for Forward {
    type Response = Response<UpstreamBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The client queues on its own pool; it is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        if let Err(message) = self.prepare(&mut req) {
            return Box::pin(future::ready(Ok(bad_request(message).map(Either::Right))));
        }
        let target = req.uri().clone();
        let response = self.client.request(req);
        Box::pin(async move {
            match response.await {
                Ok(res) => {
                    let (mut head, body) = res.into_parts();
                    strip_hop_by_hop(&mut head.headers);
                    Ok(Response::from_parts(head, Either::Left(body)))
                }
                Err(error) => {
                    eprintln!("proxy: {target}: {}", error_chain(&error));
                    Ok(bad_gateway())
                }
            }
        })
    }
}

/// The message for a target the proxy cannot forward.
const BAD_TARGET: &str = "bad request: the target must be a path\n";

/// The path and query a request keeps upstream: origin-form `/path?q` and
/// absolute-form `http://host/path?q` have one; CONNECT and `OPTIONS *` name
/// no path.
fn forwardable_path(uri: &Uri) -> Option<&http::uri::PathAndQuery> {
    uri.path_and_query()
        .filter(|pq| pq.as_str().starts_with('/'))
}

fn bad_request(message: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::from(message));
    *res.status_mut() = StatusCode::BAD_REQUEST;
    res
}

fn bad_gateway() -> Response<UpstreamBody> {
    let mut res = Response::new(Either::Right(Full::from(
        "bad gateway: no answer from the upstream server\n",
    )));
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// The error and its causes: the client's own message alone ("client
/// error (Connect)") does not say what went wrong.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
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

type CoalesceFuture = <CoalesceService<Forward, HttpKey> as Service<Request<Incoming>>>::Future;

/// Turns the layer's response into the proxy's.
type IntoProxyBody = fn(Response<CoalesceBody<UpstreamBody>>) -> Response<ProxyBody>;

/// The key the proxy coalesces by: [`HttpKey`]'s, so the authority (the
/// client's `Host`, which reaches the upstream as `X-Forwarded-Host`) is in
/// it — unless a public host name is set, which every request then sends
/// instead; so every proxy instance shares keys whatever address it listens
/// on. With trusted forwarding headers, those that describe the request
/// rather than the client are keyed.
pub fn proxy_key(forwarding: &Forwarding) -> HttpKey {
    let mut key = HttpKey::new();
    if forwarding.public_host.is_some() {
        key = key.without_authority();
    }
    if forwarding.trust {
        for name in KEYED_FORWARDING {
            key = key.vary(HeaderName::from_static(name));
        }
    }
    key
}

/// The whole proxy for one client connection: sends each request through
/// the coalescing layer to [`Forward`], which prepares it for the upstream.
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: CoalesceService<Forward, HttpKey>,
    layer: CoalesceLayer,
    forward: Forward,
}

/// A proxy to `upstream` (`http://host:port`) through `layer`, which must
/// key by [`proxy_key`] of the same `forwarding` (as [`layer`] does).
pub fn proxy_service(
    upstream: Uri,
    forwarding: Forwarding,
    layer: CoalesceLayer,
) -> Result<Proxy, String> {
    let upstream = Upstream::new(&upstream).map_err(|e| format!("upstream {upstream}: {e}"))?;
    let forward = Forward::new(upstream, forwarding);
    Ok(Proxy {
        inner: layer.layer(forward.clone()),
        layer,
        forward,
    })
}

impl Proxy {
    /// The same proxy, for requests that come from `addr` (appended to
    /// `X-Forwarded-For`).
    pub fn for_client(&self, addr: SocketAddr) -> Self {
        let forward = Forward {
            peer: Some(addr),
            ..self.forward.clone()
        };
        Self {
            inner: self.layer.layer(forward.clone()),
            layer: self.layer.clone(),
            forward,
        }
    }
}

/// Appends the client's address to `X-Forwarded-For`, as one comma-joined
/// value: some readers only look at the first field line.
fn append_forwarded_for(headers: &mut HeaderMap, addr: SocketAddr) {
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

impl Service<Request<Incoming>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = future::Either<
        future::Ready<Result<Response<ProxyBody>, Infallible>>,
        future::MapOk<CoalesceFuture, IntoProxyBody>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        // Checked before the layer: a target with no path has no key to
        // coalesce by and nothing to forward.
        if forwardable_path(req.uri()).is_none() {
            let res = bad_request(BAD_TARGET).map(Either::Right);
            return future::Either::Left(future::ready(Ok(res)));
        }
        let into_proxy_body: IntoProxyBody = |res| res.map(Either::Left);
        future::Either::Right(self.inner.call(req).map_ok(into_proxy_body))
    }
}

/// Accepts HTTP/1.1 connections on `listener` and serves each with `proxy`,
/// until the task is dropped.
pub async fn serve(listener: TcpListener, proxy: Proxy) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, typically: retrying at once would
                // spin; the condition clears as connections close.
                eprintln!("proxy: accept: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.for_client(addr);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| proxy.clone().oneshot(req));
            // The timer enables hyper's header read timeout (30 s), so idle
            // or trickling clients cannot hold connections forever.
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                if !error.is_incomplete_message() {
                    eprintln!("proxy: connection from {addr}: {error}");
                }
            }
        });
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match Args::parse(argv) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("proxy: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.redis.is_some() && args.ttl.is_zero() {
        eprintln!(
            "proxy: warning: with --ttl-ms 0 instances cannot hand answers to each other \
             through Redis; only requests within one instance coalesce"
        );
    }
    let layer = match layer(&args).await {
        Ok(layer) => layer,
        Err(error) => {
            eprintln!("proxy: {error}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("proxy: cannot listen on {}: {error}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let proxy = match proxy_service(
        args.upstream.clone(),
        args.forwarding.clone(),
        layer.clone(),
    ) {
        Ok(proxy) => proxy,
        Err(error) => {
            eprintln!("proxy: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "proxy: http://{} -> {} (ttl {} ms, {}{})",
        args.listen,
        args.upstream,
        args.ttl.as_millis(),
        args.redis
            .as_deref()
            .map_or("in-process".to_owned(), |url| format!(
                "redis {}",
                redact(url)
            )),
        args.header
            .as_ref()
            .map_or(String::new(), |h| format!(", header {h}")),
    );
    tokio::select! {
        () = serve(listener, proxy) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("\n{:#?}", layer.stats());
    ExitCode::SUCCESS
}

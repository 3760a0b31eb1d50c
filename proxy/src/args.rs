//! The command line: parsed by clap, every value checked before anything
//! starts.

use crate::forward::{Forwarding, Upstream};
use clap::{ArgGroup, CommandFactory, FromArgMatches, Parser};
use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;
use http::Uri;
use std::net::SocketAddr;
use std::time::Duration;

/// The proxy's settings, from the command line.
#[derive(Debug, Clone)]
pub struct Args {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where the admin endpoints listen (`/healthz`, `/readyz`,
    /// `/metrics`), if anywhere.
    pub admin_listen: Option<SocketAddr>,
    /// Log lines as JSON objects rather than text.
    pub log_json: bool,
    /// Log a line per request: `Some(true)` with the query, `Some(false)`
    /// without.
    pub access_log: Option<bool>,
    /// The listener's certificate chain and private key (PEM files), if it
    /// speaks TLS.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The service behind the proxy.
    pub upstream: Uri,
    /// How the proxy speaks to it.
    pub upstream_options: crate::UpstreamOptions,
    /// The Redis shared with other instances, if any.
    pub redis: Option<String>,
    /// Or the Redis Cluster shared with them: some of its nodes' URLs.
    pub redis_cluster: Vec<String>,
    /// The prefix of the Redis names, if not the backend's default
    /// (`coalesce`): proxies share answers only within one namespace.
    pub namespace: Option<String>,
    /// How long answers are kept, whatever the upstream says; zero only
    /// coalesces concurrent requests. `None`: as long as the upstream's
    /// `Cache-Control`/`Expires` say (RFC 9111), within `max_ttl`.
    pub ttl: Option<Duration>,
    /// Without a fixed ttl: how long an answer without explicit freshness
    /// is kept.
    pub default_ttl: Duration,
    /// Without a fixed ttl: the longest any answer is kept.
    pub max_ttl: Duration,
    /// With a fixed ttl: how long an answer is then served stale while it
    /// is refreshed; without: the most an upstream's
    /// `stale-while-revalidate` is honoured.
    pub stale: Duration,
    /// The flight lease, if not the layer's default.
    pub lease: Option<Duration>,
    /// Early refresh's beta (XFetch); 0 for none.
    pub early_refresh: f64,
    /// The token `PURGE` requests must carry, if the entry point is on.
    pub purge_token: Option<String>,
    /// The response header that tags answers for purging.
    pub tag_header: Option<HeaderName>,
    /// The outcome header, or `None` for none.
    pub header: Option<HeaderName>,
    /// Whether responses carry the proxy's `Cache-Status` member.
    pub cache_status: bool,
    /// What the proxy does with forwarding headers.
    pub forwarding: Forwarding,
    /// On `SIGTERM` or Ctrl-C, how long requests in flight get to finish.
    pub shutdown_grace: Duration,
    /// How long a request waits for its flight (the layer's `wait_timeout`).
    pub flight_timeout: Duration,
    /// The most client connections open at once.
    pub max_connections: usize,
    /// Whether successful unsafe requests purge their URL (RFC 9111 §4.4).
    pub invalidate_on_unsafe: bool,
    /// Whether `5xx` answers with explicit freshness are stored.
    pub store_server_errors: bool,
    /// Whether `CDN-Cache-Control` (RFC 9213) decides in place of
    /// `Cache-Control` when an answer carries it.
    pub cdn_cache_control: bool,
    /// Whether `Accept-Encoding` is rewritten to `br`, `gzip` or nothing.
    pub normalize_accept_encoding: bool,
    /// How long answers with validators are kept past their windows, for
    /// revalidation only.
    pub revalidation_retention: Duration,
    /// The largest answer stored.
    pub max_stored_bytes: usize,
    /// Whether `GET`/`HEAD` requests are coalesced (a route in `bypass`
    /// mode coalesces none).
    pub coalesce: bool,
    /// The `layer` label of the layer's metrics: `default` for the
    /// requests no route takes, `route-<n>` for the file's `n`th route.
    pub metrics_label: String,
    /// The config file's routes.
    pub(crate) routes: Vec<crate::routes::RouteSpec>,
}

/// The command line as clap reads it.
#[derive(Debug, Parser)]
#[command(
    name = "coalesce-proxy",
    version,
    about = "A coalescing reverse proxy: identical concurrent GET/HEAD requests cost the \
             upstream one call, across every instance that shares a Redis."
)]
// What sharing through Redis needs one of: `--namespace` means nothing
// without it.
#[command(group(ArgGroup::new("shared").args(["redis", "redis_cluster"])))]
pub(crate) struct Cli {
    /// Read settings from this TOML file: its keys are these flags' names
    /// (`upstream-timeout-ms = 5000`, `access-log = true`). Every flag is
    /// also read from COALESCE_<NAME> (COALESCE_UPSTREAM_TIMEOUT_MS).
    /// Precedence: flags, then the environment, then the file, then the
    /// defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,

    /// Where to listen, IP:PORT.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Serve /healthz, /readyz and /metrics (Prometheus) on this address,
    /// IP:PORT, apart from the public port.
    #[arg(long = "admin-listen", value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,

    /// How log lines are written to standard error: text, or json (one
    /// object per line). RUST_LOG filters them (default: warn).
    #[arg(long = "log-format", value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    /// Log one line per request at INFO (target coalesce_proxy::access):
    /// method, path without the query, status, outcome, duration to the
    /// last byte, bytes sent. Never a header.
    #[arg(long = "access-log")]
    access_log: bool,

    /// With --access-log, keep the query in the logged path (queries may
    /// carry tokens).
    #[arg(long = "access-log-query", requires = "access_log")]
    access_log_query: bool,

    /// Speak TLS on the listener with this certificate chain (PEM); HTTP/2
    /// and HTTP/1.1 are offered by ALPN. Read again, with the key, on
    /// SIGHUP: new connections get the new certificate, open ones are kept.
    #[arg(long = "tls-cert", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long = "tls-key", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,

    /// The service behind the proxy, http://host:port or https://host:port
    /// (offered HTTP/2 and HTTP/1.1 by ALPN, its certificate verified
    /// against the system's roots or --upstream-ca).
    #[arg(long, value_name = "URL", value_parser = upstream)]
    upstream: Uri,

    /// Speak HTTP/2 to an http:// upstream, with prior knowledge (h2c);
    /// one connection then carries every request at once.
    #[arg(long = "upstream-http2")]
    upstream_http2: bool,

    /// Verify an https:// upstream's certificate against the certificate
    /// authorities in this PEM file instead of the system's roots.
    #[arg(long = "upstream-ca", value_name = "FILE")]
    upstream_ca: Option<std::path::PathBuf>,

    /// Share flights and stored answers with every proxy using this Redis.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,

    /// Share them through this Redis Cluster instead: some of its nodes,
    /// comma-separated (the others are found from them).
    #[arg(
        long = "redis-cluster",
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        conflicts_with = "redis"
    )]
    redis_cluster: Vec<String>,

    /// Prefix every Redis name with NAME [default: coalesce]: only proxies
    /// with the same namespace share flights and answers, so each site
    /// sharing a Redis can have its own.
    #[arg(long, value_name = "NAME", value_parser = namespace, requires = "shared")]
    namespace: Option<String>,

    /// Keep answers for N milliseconds whatever the upstream says (0:
    /// coalesce only, store nothing). Without it, answers are kept as long
    /// as the upstream's Cache-Control or Expires allow (RFC 9111).
    #[arg(long = "ttl-ms", value_name = "N")]
    ttl_ms: Option<u64>,

    /// Without --ttl-ms: keep answers that carry no freshness information
    /// (no max-age, s-maxage or Expires) for N milliseconds.
    #[arg(
        long = "default-ttl-ms",
        value_name = "N",
        default_value_t = 0,
        conflicts_with = "ttl_ms"
    )]
    default_ttl_ms: u64,

    /// Without --ttl-ms: keep no answer longer than N milliseconds.
    #[arg(
        long = "max-ttl-ms",
        value_name = "N",
        default_value_t = 86_400_000,
        conflicts_with = "ttl_ms"
    )]
    max_ttl_ms: u64,

    /// With --ttl-ms: serve an answer for N more milliseconds once its ttl
    /// is over, while one refresh fetches the next [default: 0]. Without:
    /// honour the upstream's stale-while-revalidate up to N milliseconds
    /// [default: 3600000].
    #[arg(long = "stale-ms", value_name = "N")]
    stale_ms: Option<u64>,

    /// With --redis: how long a flight's lease lasts unrenewed, so how soon
    /// others take over from an instance that died [default: 10000].
    #[arg(long = "lease-ms", value_name = "N")]
    lease_ms: Option<u64>,

    /// Refresh hot answers before they go stale, one refresh per key across
    /// the instances: XFetch's beta (1.0 is the paper's choice; larger
    /// refreshes earlier) [default: 0, never].
    #[arg(long = "early-refresh", value_name = "BETA", value_parser = beta)]
    early_refresh: Option<f64>,

    /// Answer PURGE requests that carry `Authorization: Bearer <token>`,
    /// the token being this file's content (trimmed): with `X-Purge-Tag:
    /// <tags>` they purge those tags, without it their URL, in every
    /// instance sharing the Redis. Off by default (PURGE then goes to the
    /// upstream like any unsafe request).
    #[arg(long = "purge-token-file", value_name = "PATH", value_parser = token_file)]
    purge_token_file: Option<String>,

    /// The response header whose values tag answers for purging (space- or
    /// comma-separated); removed before answers reach clients.
    #[arg(long = "tag-header", value_name = "NAME", value_parser = header_name, default_value = "surrogate-key")]
    tag_header: HeaderName,

    /// Read no tags from responses (and pass the tag header through).
    #[arg(long = "no-tag-header", conflicts_with = "tag_header")]
    no_tag_header: bool,

    /// The host name clients use, sent as X-Forwarded-Host on every request
    /// and keyed in place of the client's Host, so proxies reached by
    /// different addresses share keys.
    #[arg(long = "public-host", value_name = "HOST", value_parser = public_host)]
    public_host: Option<HeaderValue>,

    /// Keep the X-Forwarded-*/Forwarded headers clients send (only behind a
    /// load balancer that sets them); by default they are dropped.
    #[arg(long = "trust-forwarded")]
    trust_forwarded: bool,

    /// The outcome response header (hit, leader, follower, stale...) [default: x-coalesce].
    #[arg(long, value_name = "NAME", value_parser = header_name)]
    header: Option<HeaderName>,

    /// Write no outcome header.
    #[arg(long = "no-header", conflicts_with = "header")]
    no_header: bool,

    /// Write no Cache-Status (RFC 9211) member; by default each response
    /// gets one, named coalesce-proxy, after any the upstream sent.
    #[arg(long = "no-cache-status")]
    no_cache_status: bool,

    /// On SIGTERM or Ctrl-C: stop accepting, then give requests in flight up
    /// to N milliseconds to finish; leases still held then are released.
    #[arg(long = "shutdown-grace-ms", value_name = "N", default_value_t = 30_000)]
    shutdown_grace_ms: u64,

    /// How long the upstream may take to start answering any request
    /// (its head; a body may then take as long as it streams). Past it the
    /// request gets 504 — for a coalesced request, every caller of its
    /// flight, and nothing is stored.
    #[arg(long = "upstream-timeout-ms", value_name = "N", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    upstream_timeout_ms: u64,

    /// How long a request waits for its flight's answer, at most (the
    /// layer's wait timeout); past it, it gets 504 (or a stale answer that
    /// may stand in for an error).
    #[arg(long = "flight-timeout-ms", value_name = "N", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    flight_timeout_ms: u64,

    /// The most client connections open at once; past it new connections
    /// wait in the listen backlog until one closes.
    #[arg(long = "max-connections", value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,

    /// The largest request body (bytes) sent on to the upstream: a larger
    /// declared `Content-Length` gets 413 at once, a chunked body that grows
    /// past it is cut off and gets 413.
    #[arg(long = "max-request-body-bytes", value_name = "N", default_value_t = 16 * 1024 * 1024)]
    max_request_body_bytes: u64,

    /// Do not purge the stored answers of a URL when an unsafe request
    /// (POST, PUT, DELETE...) to it succeeds. This turns off a MUST of RFC
    /// 9111 §4.4: clients may then read, until it expires, an answer the
    /// write replaced.
    #[arg(long = "no-invalidate-on-unsafe")]
    no_invalidate_on_unsafe: bool,

    /// Store `5xx` answers that carry explicit freshness (`s-maxage`,
    /// `max-age` or `Expires`) like any other answer. Off by default: a
    /// `5xx` reaches every caller of its flight but is never stored. A `5xx`
    /// never replaces a stored answer that may stand in for it
    /// (stale-if-error).
    #[arg(long = "store-server-errors")]
    store_server_errors: bool,

    /// Ignore CDN-Cache-Control (RFC 9213). By default, an answer that
    /// carries a valid one is stored and kept as it says, and its
    /// Cache-Control and Expires are then ignored (CDN-Cache-Control:
    /// private, for one, keeps it out of the cache). Either way the field
    /// is passed on to clients.
    #[arg(long = "no-cdn-cache-control")]
    no_cdn_cache_control: bool,

    /// Rewrite the Accept-Encoding of GET/HEAD requests to br, gzip or
    /// nothing (the first the client accepts) before keying and forwarding
    /// them: answers that vary on it then make at most three variants.
    #[arg(long = "normalize-accept-encoding")]
    normalize_accept_encoding: bool,

    /// How long an answer with validators (ETag, Last-Modified) is kept
    /// past the time it may be served, for revalidation only: the next
    /// request then asks the upstream whether it changed, and a 304 renews
    /// it without a body. 0 keeps nothing past it.
    #[arg(
        long = "revalidation-retention-ms",
        value_name = "N",
        default_value_t = 600_000
    )]
    revalidation_retention_ms: u64,

    /// The largest answer (in bytes) kept to answer later requests. Larger
    /// ones are still shared with every request of their burst, streamed as
    /// they arrive, but the next request goes to the upstream again. With
    /// Redis, each instance holds stored answers in its memory too.
    #[arg(long = "max-stored-bytes", value_name = "N", default_value_t = 1024 * 1024)]
    max_stored_bytes: usize,
}

impl Args {
    /// Whether answers are shared with other instances (through `--redis`
    /// or `--redis-cluster`).
    pub fn shares(&self) -> bool {
        self.redis.is_some() || !self.redis_cluster.is_empty()
    }

    /// Where answers are shared, for messages: `redis <url>` or `redis
    /// cluster <urls>`, without passwords.
    pub fn redis_shown(&self) -> String {
        match &self.redis {
            Some(url) => format!("redis {}", crate::redact(url)),
            None => {
                let nodes: Vec<String> = self
                    .redis_cluster
                    .iter()
                    .map(|u| crate::redact(u))
                    .collect();
                format!("redis cluster {}", nodes.join(","))
            }
        }
    }

    /// Parses the arguments that follow the program name; the error is
    /// clap's message (also for `--help`).
    pub fn parse<I>(args: I) -> Result<Self, String>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let argv = args.into_iter().map(Into::into).collect();
        Self::read(argv).map_err(|error| match error {
            Read::Clap(error, origins) => origins.explain(error),
            Read::File(message) => message,
        })
    }

    /// Parses the process's own arguments (with the environment and the
    /// file they name); on `--help`, `--version` or a bad argument, prints
    /// what clap says and exits (status 2 for errors).
    pub fn from_env() -> Self {
        match Self::read(std::env::args().skip(1).collect()) {
            Ok(args) => args,
            Err(Read::Clap(error, origins)) => match error.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    error.exit()
                }
                _ => {
                    eprintln!("coalesce-proxy: {}", origins.explain(error));
                    std::process::exit(2);
                }
            },
            Err(Read::File(message)) => {
                eprintln!("coalesce-proxy: {message}");
                std::process::exit(2);
            }
        }
    }

    fn read(argv: Vec<String>) -> Result<Self, Read> {
        let (argv, origins, routes) = crate::config::with_file(argv).map_err(Read::File)?;
        let argv = std::iter::once("coalesce-proxy".to_owned()).chain(argv);
        let matches = match command().try_get_matches_from(argv) {
            Ok(matches) => matches,
            Err(error) => return Err(Read::Clap(error, origins)),
        };
        let mut args = Cli::from_arg_matches(&matches)
            .map(Self::from)
            .map_err(|error| Read::Clap(error, origins))?;
        args.routes = routes;
        Ok(args)
    }

    /// `argv` read as flags alone: no file, no environment (a route's own
    /// settings).
    pub(crate) fn parse_alone(argv: Vec<String>) -> Result<Self, String> {
        let argv = std::iter::once("coalesce-proxy".to_owned()).chain(argv);
        Cli::try_parse_from(argv)
            .map(Self::from)
            .map_err(|e| crate::config::first_line(&e))
    }
}

impl Args {
    /// The effective settings, one `name = value` line each, as
    /// `coalesce-proxy check` prints them: never a secret (the purge token
    /// is not shown, Redis passwords are masked).
    pub fn summary(&self) -> String {
        let ms = |d: Duration| d.as_millis().to_string();
        let freshness = match self.ttl {
            Some(ttl) => format!("ttl {} ms, stale {} ms", ttl.as_millis(), self.stale.as_millis()),
            None => format!(
                "from the upstream (at most {} ms; {} ms without; stale-while-revalidate up to {} ms)",
                self.max_ttl.as_millis(),
                self.default_ttl.as_millis(),
                self.stale.as_millis()
            ),
        };
        let lines = [
            ("listen", self.listen.to_string()),
            (
                "tls",
                self.tls.as_ref().map_or("off".into(), |(c, k)| {
                    format!("{} {}", c.display(), k.display())
                }),
            ),
            (
                "admin-listen",
                self.admin_listen.map_or("off".into(), |a| a.to_string()),
            ),
            ("upstream", self.upstream.to_string()),
            ("upstream-http2", self.upstream_options.http2.to_string()),
            (
                "shared",
                if self.shares() {
                    self.redis_shown()
                } else {
                    "no (in-process)".into()
                },
            ),
            (
                "namespace",
                self.namespace.clone().unwrap_or_else(|| "coalesce".into()),
            ),
            ("freshness", freshness),
            ("upstream-timeout-ms", ms(self.upstream_options.timeout)),
            ("flight-timeout-ms", ms(self.flight_timeout)),
            ("max-connections", self.max_connections.to_string()),
            (
                "max-request-body-bytes",
                self.upstream_options.max_request_body.to_string(),
            ),
            ("max-stored-bytes", self.max_stored_bytes.to_string()),
            (
                "purge",
                if self.purge_token.is_some() {
                    "with a token".into()
                } else {
                    "off".into()
                },
            ),
            (
                "access-log",
                self.access_log.map_or("off".into(), |q| {
                    if q {
                        "with queries".into()
                    } else {
                        "on".into()
                    }
                }),
            ),
            (
                "log-format",
                if self.log_json {
                    "json".into()
                } else {
                    "text".into()
                },
            ),
        ];
        let mut out: String = lines
            .iter()
            .map(|(name, value)| format!("{name} = {value}\n"))
            .collect();
        for (n, route) in self.routes.iter().enumerate() {
            out.push_str(&format!("route {} = {}\n", n + 1, route.describe(self)));
        }
        out
    }
}

/// Why the settings could not be read.
enum Read {
    Clap(clap::Error, crate::config::Origins),
    File(String),
}

/// The command line clap reads: every flag also from the environment.
pub(crate) fn command() -> clap::Command {
    crate::config::with_env(Cli::command())
}

impl From<Cli> for Args {
    fn from(cli: Cli) -> Self {
        let header = match (cli.no_header, cli.header) {
            (true, _) => None,
            (false, Some(name)) => Some(name),
            (false, None) => Some(HeaderName::from_static("x-coalesce")),
        };
        Self {
            listen: cli.listen,
            admin_listen: cli.admin_listen,
            log_json: cli.log_format == "json",
            access_log: cli.access_log.then_some(cli.access_log_query),
            tls: cli.tls_cert.zip(cli.tls_key),
            upstream: cli.upstream,
            upstream_options: crate::UpstreamOptions {
                timeout: Duration::from_millis(cli.upstream_timeout_ms),
                max_request_body: cli.max_request_body_bytes,
                http2: cli.upstream_http2,
                ca: cli.upstream_ca,
            },
            redis: cli.redis,
            redis_cluster: cli.redis_cluster,
            namespace: cli.namespace,
            ttl: cli.ttl_ms.map(Duration::from_millis),
            default_ttl: Duration::from_millis(cli.default_ttl_ms),
            max_ttl: Duration::from_millis(cli.max_ttl_ms),
            stale: Duration::from_millis(cli.stale_ms.unwrap_or(match cli.ttl_ms {
                Some(_) => 0,
                None => 3_600_000,
            })),
            lease: cli.lease_ms.map(Duration::from_millis),
            early_refresh: cli.early_refresh.unwrap_or(0.0),
            purge_token: cli.purge_token_file,
            tag_header: (!cli.no_tag_header).then_some(cli.tag_header),
            header,
            cache_status: !cli.no_cache_status,
            forwarding: Forwarding {
                public_host: cli.public_host,
                trust: cli.trust_forwarded,
            },
            shutdown_grace: Duration::from_millis(cli.shutdown_grace_ms),
            flight_timeout: Duration::from_millis(cli.flight_timeout_ms),
            max_connections: usize::try_from(cli.max_connections).unwrap_or(usize::MAX),
            invalidate_on_unsafe: !cli.no_invalidate_on_unsafe,
            store_server_errors: cli.store_server_errors,
            cdn_cache_control: !cli.no_cdn_cache_control,
            normalize_accept_encoding: cli.normalize_accept_encoding,
            revalidation_retention: Duration::from_millis(cli.revalidation_retention_ms),
            max_stored_bytes: cli.max_stored_bytes,
            coalesce: true,
            metrics_label: "default".to_owned(),
            routes: Vec::new(),
        }
    }
}

fn upstream(v: &str) -> Result<Uri, String> {
    let uri: Uri = v.parse().map_err(|e| format!("{e}"))?;
    Upstream::new(&uri)?;
    Ok(uri)
}

fn token_file(path: &str) -> Result<String, String> {
    let token = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let token = token.trim();
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{path}: a purge token is at least 16 visible ASCII characters"
        ));
    }
    Ok(token.to_owned())
}

fn beta(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|b| (0.0..=1000.0).contains(b))
        .ok_or_else(|| "expected a number from 0 to 1000".to_owned())
}

fn public_host(v: &str) -> Result<HeaderValue, String> {
    v.parse::<Authority>()
        .ok()
        .filter(|a| !a.as_str().contains('@'))
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .ok_or_else(|| "expected a host name".to_owned())
}

/// What the Redis backend accepts as a namespace: `{` and `}` would break
/// the hash tag that keeps a key's names in one cluster slot.
fn namespace(v: &str) -> Result<String, String> {
    if v.is_empty() || v.contains(['{', '}']) {
        return Err("expected a non-empty name without '{' or '}'".to_owned());
    }
    Ok(v.to_owned())
}

fn header_name(v: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(v.as_bytes()).map_err(|_| "not a header name".to_owned())
}

//! The command line as clap reads it: every flag with its help text, and
//! the checks each value passes before anything starts. [`Args`](crate::Args)
//! is what the rest of the proxy reads.

use crate::forward::{Forwarding, Upstream};
use crate::Args;
use clap::{ArgGroup, CommandFactory, Parser};
use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;
use http::Uri;
use std::net::SocketAddr;
use std::time::Duration;

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

    /// Request headers whose values are part of the key (comma-separated;
    /// repeatable), such as a tenant or locale header the upstream answers
    /// by. A credential header listed here (`authorization`) no longer
    /// makes requests bypass: each credential gets answers of its own.
    #[arg(long = "key-header", value_name = "NAME[,NAME...]", value_delimiter = ',', value_parser = header_name)]
    key_header: Vec<HeaderName>,

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

    /// HTTP/1.1: how long a client has to send a request's head, counted
    /// from when its connection is ready for one (so it also ends an idle
    /// keep-alive connection); past it the connection closes.
    #[arg(long = "header-read-timeout-ms", value_name = "N", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    header_read_timeout_ms: u64,

    /// A connection with no request in progress for this long is closed
    /// gracefully (HTTP/2 gets GOAWAY): what ends an idle HTTP/2
    /// connection. Looked at once per timeout: closed after one to two.
    #[arg(long = "idle-timeout-ms", value_name = "N", default_value_t = 75_000, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_ms: u64,

    /// HTTP/2: the most streams one client connection may have open.
    #[arg(long = "h2-max-concurrent-streams", value_name = "N", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    h2_max_concurrent_streams: u32,

    /// HTTP/2: how often a connection is pinged to find a client that went
    /// away without a word.
    #[arg(long = "h2-keep-alive-interval-ms", value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    h2_keep_alive_interval_ms: u64,

    /// HTTP/2: how long a ping may go unanswered before the connection is
    /// closed.
    #[arg(long = "h2-keep-alive-timeout-ms", value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    h2_keep_alive_timeout_ms: u64,

    /// HTTP/2: streams a client may open and reset before they are
    /// accepted, at most (the rapid-reset flood); past it the connection
    /// is closed.
    #[arg(
        long = "h2-max-pending-accept-reset-streams",
        value_name = "N",
        default_value_t = 20
    )]
    h2_max_pending_accept_reset_streams: usize,

    /// HTTP/2: streams the proxy may reset for a client's protocol errors
    /// on one connection, at most, before closing it.
    #[arg(
        long = "h2-max-local-error-reset-streams",
        value_name = "N",
        default_value_t = 1024
    )]
    h2_max_local_error_reset_streams: usize,

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
            key_headers: cli.key_header,
            body_keys: None,
            header,
            cache_status: !cli.no_cache_status,
            forwarding: Forwarding {
                public_host: cli.public_host,
                trust: cli.trust_forwarded,
            },
            shutdown_grace: Duration::from_millis(cli.shutdown_grace_ms),
            flight_timeout: Duration::from_millis(cli.flight_timeout_ms),
            max_connections: usize::try_from(cli.max_connections).unwrap_or(usize::MAX),
            connections: crate::ConnectionOptions {
                header_read_timeout: Duration::from_millis(cli.header_read_timeout_ms),
                idle_timeout: Duration::from_millis(cli.idle_timeout_ms),
                h2_max_concurrent_streams: cli.h2_max_concurrent_streams,
                h2_keep_alive: (
                    Duration::from_millis(cli.h2_keep_alive_interval_ms),
                    Duration::from_millis(cli.h2_keep_alive_timeout_ms),
                ),
                h2_max_pending_accept_reset_streams: cli.h2_max_pending_accept_reset_streams,
                h2_max_local_error_reset_streams: cli.h2_max_local_error_reset_streams,
            },
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

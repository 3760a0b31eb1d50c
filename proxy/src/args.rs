//! The proxy's settings: read from the command line, the environment and
//! the config file (see [`cli`](crate::cli) for the flags), every value
//! checked before anything starts.

use crate::cli::{command, Cli};
use crate::forward::Forwarding;
use clap::{FromArgMatches, Parser};
use http::header::HeaderName;
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
    /// Request headers keyed besides those every key has.
    pub key_headers: Vec<HeaderName>,
    /// A route's requests keyed by their bodies (`body-keys` in a route).
    pub body_keys: Option<crate::routes::BodySpec>,
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
    /// How each client connection is served: timeouts, HTTP/2 limits.
    pub connections: crate::ConnectionOptions,
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

/// Why the settings could not be read.
enum Read {
    Clap(clap::Error, crate::config::Origins),
    File(String),
}

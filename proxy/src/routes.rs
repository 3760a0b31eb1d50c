//! Routes: an ordered list in the config file (`[[route]]`), the first that
//! matches a request's host and path taking it, each with its upstream and
//! policy; requests no route takes go to `--upstream` with the flags'
//! policy. A route may drop query parameters (`utm_*`, …) and sort the
//! rest before the request is keyed, so the key and the upstream see the
//! same query: a parameter one caller sent and the key ignored would
//! otherwise decide the answer everyone gets.

mod take;

use crate::{Args, Proxy, ProxyLayer};
use http::Request;
use hyper::body::Incoming;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use take::{Paths, Take};
use tower::ServiceExt;
use tower_coalesce::RedisBackend;

/// A route as the file writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RouteSpec {
    /// The host it takes (case-insensitive, without a port); any if absent.
    host: Option<String>,
    /// The paths it takes: a prefix (`/api/` takes `/api/` and below), or,
    /// with a `*` in it, a glob the whole path must match: `*` within one
    /// segment, `**` across segments (`/users/*/orders/**`).
    #[serde(default = "root")]
    path: String,
    /// Request headers keyed besides the top-level `key-header`s.
    #[serde(default)]
    key_headers: Vec<String>,
    /// `json` or `graphql`: the route's requests to its `path` exactly are
    /// keyed by what their body means (see [`BodySpec`]).
    body_keys: Option<BodyForm>,
    /// The largest body read to be keyed (larger ones go on unkeyed).
    body_limit_bytes: Option<usize>,
    /// Store the body-keyed answers (by default they are shared with the
    /// concurrent requests alone, as a `POST`'s answer is never reused).
    #[serde(default)]
    body_keys_stored: bool,
    upstream: String,
    /// `origin` (the upstream's freshness), `ttl` (`ttl-ms`), `coalesce`
    /// (nothing stored) or `bypass` (nothing coalesced).
    mode: Option<Mode>,
    ttl_ms: Option<u64>,
    stale_ms: Option<u64>,
    #[serde(default)]
    ignore_query: Vec<String>,
    #[serde(default)]
    sort_query: bool,
    namespace: Option<String>,
    tag_header: Option<String>,
    invalidate_on_unsafe: Option<bool>,
    upstream_timeout_ms: Option<u64>,
    upstream_http2: Option<bool>,
}

fn root() -> String {
    "/".to_owned()
}

/// How a route's bodies are keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BodyForm {
    /// `POST`s with a JSON body, keyed by its canonical form.
    Json,
    /// GraphQL queries (`POST` and `GET`), keyed by the selected operation,
    /// normalised, and its variables; mutations and subscriptions bypass.
    Graphql,
}

/// A route whose requests to one path are keyed by their bodies: GraphQL
/// queries or JSON `POST`s, with the route's key headers, up to `limit`
/// bytes of body, their answers stored only if `stored`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodySpec {
    form: BodyForm,
    path: String,
    limit: usize,
    stored: bool,
}

impl BodySpec {
    /// The library's route, keying `headers` besides `Accept`.
    pub(crate) fn route(&self, headers: &[http::HeaderName]) -> tower_coalesce::body_keys::Route {
        use tower_coalesce::body_keys::Route;
        let mut route = match self.form {
            BodyForm::Json => Route::json(http::Method::POST, self.path.clone()),
            BodyForm::Graphql => Route::graphql(self.path.clone()),
        };
        route = route.limit(self.limit);
        for name in headers {
            route = route.vary(name.clone());
        }
        if self.stored {
            route = route.stored();
        }
        route
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Origin,
    Ttl,
    Coalesce,
    Bypass,
}

/// The `[[route]]` tables of a config file (its other keys are flags).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RoutesFile {
    #[serde(default)]
    route: Vec<RouteSpec>,
}

impl RoutesFile {
    /// The routes in the TOML `text` of the file at `path`; an error names
    /// the file, the line and the field.
    pub(crate) fn read(path: &str, text: &str) -> Result<Vec<RouteSpec>, String> {
        let file: RoutesFile = toml::from_str(text).map_err(|e| format!("{path}: {e}"))?;
        Ok(file.route)
    }
}

impl RouteSpec {
    /// The settings of this route: `base` (the flags' settings) with the
    /// route's own in place.
    pub(crate) fn args(&self, base: &Args) -> Result<Args, String> {
        let mut argv = vec!["--upstream".to_owned(), self.upstream.clone()];
        let mut flag = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                argv.push(format!("--{name}={value}"));
            }
        };
        flag("ttl-ms", self.ttl_ms.map(|ms| ms.to_string()));
        flag("stale-ms", self.stale_ms.map(|ms| ms.to_string()));
        flag("namespace", self.namespace.clone());
        flag("tag-header", self.tag_header.clone());
        flag(
            "upstream-timeout-ms",
            self.upstream_timeout_ms.map(|ms| ms.to_string()),
        );
        if !self.key_headers.is_empty() {
            flag("key-header", Some(self.key_headers.join(",")));
        }
        if !self.path.starts_with('/') {
            return Err(format!("route {}: path must start with /", self.shown()));
        }
        // Checked as the flags are: the same messages for the same mistakes.
        let own = Args::parse_alone(argv).map_err(|e| format!("route {}: {e}", self.shown()))?;
        let mut args = base.clone();
        args.upstream = own.upstream;
        if self.upstream_timeout_ms.is_some() {
            args.upstream_options.timeout = own.upstream_options.timeout;
        }
        if let Some(http2) = self.upstream_http2 {
            args.upstream_options.http2 = http2;
        }
        if self.namespace.is_some() {
            args.namespace = own.namespace;
        }
        if self.tag_header.is_some() {
            args.tag_header = own.tag_header;
        }
        if let Some(on) = self.invalidate_on_unsafe {
            args.invalidate_on_unsafe = on;
        }
        for name in own.key_headers {
            if !args.key_headers.contains(&name) {
                args.key_headers.push(name);
            }
        }
        if let Some(form) = self.body_keys {
            if self.path.contains('*') {
                return Err(format!(
                    "route {}: body-keys keys one path: give it without `*`",
                    self.shown()
                ));
            }
            args.body_keys = Some(BodySpec {
                form,
                path: self.path.clone(),
                limit: self
                    .body_limit_bytes
                    .unwrap_or(tower_coalesce::body_keys::Route::DEFAULT_LIMIT),
                stored: self.body_keys_stored,
            });
        }
        let stale = self.stale_ms.map(Duration::from_millis);
        match self.mode.unwrap_or(if self.ttl_ms.is_some() {
            Mode::Ttl
        } else {
            Mode::Origin
        }) {
            Mode::Origin => {
                args.ttl = None;
                args.stale = stale.unwrap_or(base.stale);
            }
            Mode::Ttl => {
                let ttl = own
                    .ttl
                    .ok_or_else(|| format!("route {}: mode \"ttl\" needs ttl-ms", self.shown()))?;
                args.ttl = Some(ttl);
                args.stale = stale.unwrap_or(Duration::ZERO);
            }
            Mode::Coalesce => args.ttl = Some(Duration::ZERO),
            Mode::Bypass => args.coalesce = false,
        }
        Ok(args)
    }

    /// What `check` prints of the route: what it takes, and where to.
    pub(crate) fn describe(&self, base: &Args) -> String {
        match self.args(base) {
            Ok(args) => {
                let policy = match (args.coalesce, args.ttl) {
                    (false, _) => "bypass".to_owned(),
                    (true, Some(ttl)) if ttl.is_zero() => "coalesce only".to_owned(),
                    (true, Some(ttl)) => format!("ttl {} ms", ttl.as_millis()),
                    (true, None) => "the upstream's freshness".to_owned(),
                };
                let mut query = String::new();
                if !self.ignore_query.is_empty() {
                    query = format!(", ignoring {}", self.ignore_query.join(" "));
                }
                if self.sort_query {
                    query.push_str(", query sorted");
                }
                let mut keyed = String::new();
                if let Some(body) = &args.body_keys {
                    let form = match body.form {
                        BodyForm::Json => "JSON",
                        BodyForm::Graphql => "GraphQL",
                    };
                    keyed = format!(", {form} bodies keyed");
                }
                if !args.key_headers.is_empty() {
                    let names: Vec<&str> = args.key_headers.iter().map(|h| h.as_str()).collect();
                    keyed.push_str(&format!(", keyed by {}", names.join(" ")));
                }
                format!(
                    "{} -> {} ({policy}{query}{keyed})",
                    self.shown(),
                    args.upstream
                )
            }
            Err(error) => error,
        }
    }

    fn shown(&self) -> String {
        format!("{}{}", self.host.as_deref().unwrap_or(""), self.path)
    }
}

/// The proxy's routes, the first that takes a request answering it, and
/// the proxy of `--upstream` for the rest.
#[derive(Debug, Clone)]
pub struct Routes {
    routes: Arc<[(Take, Proxy)]>,
    fallback: Proxy,
}

impl From<Proxy> for Routes {
    fn from(fallback: Proxy) -> Self {
        Routes {
            routes: Arc::new([]),
            fallback,
        }
    }
}

impl Routes {
    /// The routes the file's `specs` describe, over `base`'s settings, in
    /// front of `fallback`; and every route's parts (for shutdown, purges,
    /// readiness).
    #[allow(clippy::type_complexity)]
    pub(crate) async fn build(
        specs: &[RouteSpec],
        base: &Args,
        fallback: Proxy,
    ) -> Result<(Self, Vec<(Proxy, ProxyLayer, Option<RedisBackend>)>), String> {
        let mut routes = Vec::with_capacity(specs.len());
        let mut built = Vec::with_capacity(specs.len());
        for (n, spec) in specs.iter().enumerate() {
            let mut args = spec.args(base)?;
            // Each route's series apart from the others'.
            args.metrics_label = format!("route-{}", n + 1);
            let parts = crate::build::build_one(&args).await?;
            let take = Take {
                host: spec.host.clone(),
                paths: Paths::new(&spec.path),
                ignore_query: spec.ignore_query.clone(),
                sort_query: spec.sort_query,
            };
            routes.push((take, parts.0.clone()));
            built.push(parts);
        }
        let routes = Routes {
            routes: routes.into(),
            fallback,
        };
        Ok((routes, built))
    }

    /// How many routes the file gave.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the file gave none.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The same routes, for requests that come from `addr`.
    pub(crate) fn for_client(&self, addr: SocketAddr) -> Self {
        Routes {
            routes: self
                .routes
                .iter()
                .map(|(take, proxy)| (take.clone(), proxy.for_client(addr)))
                .collect(),
            fallback: self.fallback.for_client(addr),
        }
    }

    /// Answers `req` through the route that takes it.
    pub(crate) fn answer(
        &self,
        mut req: Request<Incoming>,
    ) -> tower::util::Oneshot<Proxy, Request<Incoming>> {
        let proxy = match self.routes.iter().find(|(take, _)| take.takes(&req)) {
            Some((take, proxy)) => {
                take.rewrite(&mut req);
                proxy
            }
            None => &self.fallback,
        };
        proxy.clone().oneshot(req)
    }
}

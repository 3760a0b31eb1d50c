//! Routes: an ordered list in the config file (`[[route]]`), the first that
//! matches a request's host and path taking it, each with its upstream and
//! policy; requests no route takes go to `--upstream` with the flags'
//! policy. A route may drop query parameters (`utm_*`, …) and sort the
//! rest before the request is keyed, so the key and the upstream see the
//! same query: a parameter one caller sent and the key ignored would
//! otherwise decide the answer everyone gets.

use crate::{Args, Proxy, ProxyLayer};
use http::uri::PathAndQuery;
use http::{Request, Uri};
use hyper::body::Incoming;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
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

/// Which requests a route takes, and what it does to their query.
#[derive(Debug, Clone)]
struct Take {
    host: Option<String>,
    paths: Paths,
    ignore_query: Vec<String>,
    sort_query: bool,
}

impl Take {
    fn takes<B>(&self, req: &Request<B>) -> bool {
        let host_ok = self.host.as_ref().is_none_or(|host| {
            let asked = req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().host())
                .unwrap_or_default();
            // The host without its port, as an authority reads it.
            let authority = asked.parse::<http::uri::Authority>().ok();
            let asked = authority.as_ref().map_or(asked, http::uri::Authority::host);
            asked.eq_ignore_ascii_case(host)
        });
        host_ok && self.paths.take(req.uri().path())
    }

    /// The query without the ignored parameters, sorted by name (stably:
    /// repeated names keep their order) if asked.
    fn rewrite<B>(&self, req: &mut Request<B>) {
        if self.ignore_query.is_empty() && !self.sort_query {
            return;
        }
        let Some(query) = req.uri().query() else {
            return;
        };
        let mut pairs: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .filter(|pair| {
                let name = pair.split('=').next().unwrap_or_default();
                !self
                    .ignore_query
                    .iter()
                    .any(|pattern| ignored(pattern, name))
            })
            .collect();
        if self.sort_query {
            pairs.sort_by_key(|pair| pair.split('=').next().unwrap_or_default());
        }
        let path = req.uri().path();
        let rewritten = if pairs.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", pairs.join("&"))
        };
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = PathAndQuery::try_from(rewritten) {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
}

/// The paths a route takes.
#[derive(Debug, Clone)]
enum Paths {
    /// Those that start with it.
    Prefix(String),
    /// Those that match it whole.
    Glob(Vec<Token>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// `*`: any bytes but `/`.
    Star,
    /// `**`: any bytes.
    DeepStar,
}

impl Paths {
    /// A prefix, or a glob if `pattern` has a `*`.
    fn new(pattern: &str) -> Self {
        if !pattern.contains('*') {
            return Paths::Prefix(pattern.to_owned());
        }
        let mut tokens = Vec::new();
        let mut bytes = pattern.bytes().peekable();
        while let Some(b) = bytes.next() {
            tokens.push(match b {
                b'*' if bytes.peek() == Some(&b'*') => {
                    // Three stars or more are two.
                    while bytes.peek() == Some(&b'*') {
                        bytes.next();
                    }
                    Token::DeepStar
                }
                b'*' => Token::Star,
                b => Token::Byte(b),
            });
        }
        Paths::Glob(tokens)
    }

    fn take(&self, path: &str) -> bool {
        match self {
            Paths::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Paths::Glob(tokens) => glob(tokens, path.as_bytes()),
        }
    }
}

/// Whether `path` matches `tokens` whole. Dynamic programming over (token,
/// byte), one row at a time: time proportional to their product, whatever
/// the path (a client's) does to the stars.
fn glob(tokens: &[Token], path: &[u8]) -> bool {
    let m = tokens.len();
    // `next[i]`: tokens[i..] match path[j + 1..]; `row[i]`: they match
    // path[j..]. The row past the path's end first.
    let mut next = vec![false; m + 1];
    next[m] = true;
    for i in (0..m).rev() {
        next[i] = matches!(tokens[i], Token::Star | Token::DeepStar) && next[i + 1];
    }
    let mut row = vec![false; m + 1];
    for j in (0..path.len()).rev() {
        row[m] = false;
        for i in (0..m).rev() {
            row[i] = match tokens[i] {
                Token::Byte(b) => path[j] == b && next[i + 1],
                Token::Star => row[i + 1] || (path[j] != b'/' && next[i]),
                Token::DeepStar => row[i + 1] || next[i],
            };
        }
        std::mem::swap(&mut row, &mut next);
    }
    next[0]
}

/// Whether a parameter `name` matches `pattern`: exact, or a prefix when
/// the pattern ends with `*` (`utm_*`).
fn ignored(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn take(ignore: &[&str], sort: bool) -> Take {
        Take {
            host: Some("shop.example".into()),
            paths: Paths::new("/api/"),
            ignore_query: ignore.iter().map(|s| s.to_string()).collect(),
            sort_query: sort,
        }
    }

    fn req(uri: &str, host: &str) -> Request<()> {
        Request::get(uri).header("host", host).body(()).unwrap()
    }

    #[test]
    fn a_route_takes_its_host_and_path_prefix_and_rewrites_the_query() {
        let t = take(&["utm_*", "token"], true);
        assert!(t.takes(&req("/api/x", "Shop.Example:8080")));
        assert!(!t.takes(&req("/apix", "shop.example")));
        assert!(!t.takes(&req("/api/x", "other.example")));
        let mut r = req("/api/x?z=1&utm_source=a&token=s&a=2&z=0", "shop.example");
        t.rewrite(&mut r);
        assert_eq!(r.uri(), "/api/x?a=2&z=1&z=0");
        let mut r = req("/api/x?utm_a=1", "shop.example");
        t.rewrite(&mut r);
        assert_eq!(r.uri(), "/api/x");
    }

    #[test]
    fn a_glob_takes_whole_paths_star_within_a_segment_two_across() {
        let cases: [(&str, &str, bool); 16] = [
            ("/users/*/orders", "/users/42/orders", true),
            ("/users/*/orders", "/users/42/x/orders", false),
            ("/users/*/orders", "/users/42/orders/1", false),
            ("/users/*/orders", "/users//orders", true),
            ("/users/*/orders/**", "/users/42/orders/1/2", true),
            ("/users/*/orders/**", "/users/42/orders/", true),
            ("/users/*/orders/**", "/users/42/orders", false),
            // A later single star that cannot cross `/` leaves the match
            // to an earlier double one.
            ("/**/x/*", "/a/x/b/x/c", true),
            ("/**/x/*", "/a/x/b/y/c", false),
            ("/static/**.png", "/static/a/b.png", true),
            ("/static/**.png", "/static/a/b.jpg", false),
            ("/*", "/a", true),
            ("/*", "/a/b", false),
            ("/***", "/a/b", true),
            ("/a*c", "/abbc", true),
            ("/a*c", "/ab/c", false),
        ];
        for (pattern, path, takes) in cases {
            assert_eq!(Paths::new(pattern).take(path), takes, "{pattern} {path}");
        }
        // A client's path cannot make matching costly: many stars against
        // a long path that nearly matches stays proportional to both.
        let long = format!("/{}", "a".repeat(20_000));
        assert!(!Paths::new("/**a**a**a**a**b").take(&long));
    }
}

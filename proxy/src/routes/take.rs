//! Which requests a route takes — its host, and its path as a prefix or a
//! glob (`*` within a segment, `**` across, matched in time proportional
//! to the pattern and the path, whatever a client sends) — and what it does
//! to their query before they are keyed.

use http::uri::PathAndQuery;
use http::{Request, Uri};

/// Which requests a route takes, and what it does to their query.
#[derive(Debug, Clone)]
pub(super) struct Take {
    pub(super) host: Option<String>,
    pub(super) paths: Paths,
    pub(super) ignore_query: Vec<String>,
    pub(super) sort_query: bool,
}

impl Take {
    pub(super) fn takes<B>(&self, req: &Request<B>) -> bool {
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
    pub(super) fn rewrite<B>(&self, req: &mut Request<B>) {
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
pub(super) enum Paths {
    /// Those that start with it.
    Prefix(String),
    /// Those that match it whole.
    Glob(Vec<Token>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Token {
    Byte(u8),
    /// `*`: any bytes but `/`.
    Star,
    /// `**`: any bytes.
    DeepStar,
}

impl Paths {
    /// A prefix, or a glob if `pattern` has a `*`.
    pub(super) fn new(pattern: &str) -> Self {
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

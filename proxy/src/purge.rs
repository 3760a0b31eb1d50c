//! The admin entry point: `PURGE` requests, for services in any language.
//!
//! Off unless a token is configured (`--purge-token-file`). Then a request
//! with the method `PURGE` and `Authorization: Bearer <token>`:
//! - with an `X-Purge-Tag` header (tags separated by spaces or commas)
//!   purges every answer carrying each tag;
//! - without one purges its target URL: every variant of the path and
//!   query, for the `Host` it names (the public host with
//!   `--public-host`).
//!
//! It is answered `200` with one line per purge (`purged tag t at 12`), `401`
//! without the right token, `400` for a tag that is not one, and `503` when
//! the backend could not record the purge. A `PURGE` never reaches the
//! upstream while the entry point is on.

use crate::{ProxyBody, ProxyKey};
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use std::fmt::Write as _;
use std::sync::Arc;
use tower_coalesce::{PurgeErrorKind, Purger};

/// The `PURGE` method.
pub(crate) fn is_purge<B>(req: &Request<B>) -> bool {
    req.method().as_str() == "PURGE"
}

/// Who may purge, and through what.
#[derive(Clone)]
pub(crate) struct PurgeEndpoint {
    token: Arc<[u8]>,
    purger: Purger<ProxyKey>,
}

impl std::fmt::Debug for PurgeEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("PurgeEndpoint").finish_non_exhaustive()
    }
}

impl PurgeEndpoint {
    pub(crate) fn new(token: &str, purger: Purger<ProxyKey>) -> Self {
        Self {
            token: token.as_bytes().into(),
            purger,
        }
    }

    /// Answers a `PURGE` request.
    pub(crate) async fn answer(self, head: http::request::Parts) -> Response<ProxyBody> {
        if !self.authorized(&head.headers) {
            let mut res = text(StatusCode::UNAUTHORIZED, "a PURGE needs the purge token\n");
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
            return res;
        }
        let tags: Vec<String> = head
            .headers
            .get_all("x-purge-tag")
            .iter()
            .flat_map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split([' ', ',', '\t'])
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut report = String::new();
        let results = if tags.is_empty() {
            let host = head
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
            let url = format!("http://{host}{path}");
            vec![(format!("url {path}"), self.purger.purge_url(&url).await)]
        } else {
            let mut results = Vec::with_capacity(tags.len());
            for tag in tags {
                let purged = self.purger.purge_tag(&tag).await;
                results.push((format!("tag {tag}"), purged));
            }
            results
        };
        let mut status = StatusCode::OK;
        for (what, result) in results {
            match result {
                Ok(purged) => {
                    let _ = writeln!(report, "purged {what} at {}", purged.position);
                }
                Err(error) => {
                    status = match error.kind() {
                        PurgeErrorKind::Backend => StatusCode::SERVICE_UNAVAILABLE,
                        _ if status == StatusCode::OK => StatusCode::BAD_REQUEST,
                        _ => status,
                    };
                    let _ = writeln!(report, "not purged: {what}: {error}");
                }
            }
        }
        text(status, &report)
    }

    /// Whether the request carries the token, compared in constant time.
    fn authorized(&self, headers: &http::HeaderMap) -> bool {
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        else {
            return false;
        };
        given.len() == self.token.len()
            && given
                .iter()
                .zip(self.token.iter())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}

fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut res = Response::new(crate::own_body(Full::new(Bytes::from(body.to_owned()))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().unwrap(),
    );
    res
}

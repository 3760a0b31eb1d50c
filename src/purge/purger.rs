//! [`Purger`]: the handle applications purge with.

use super::{Purge, PurgeError, Purged, Tag};
use crate::shared::Shared;
use crate::{HttpKey, Key, KeyExtractor};
use bytes::Bytes;
use http_body_util::Empty;
use std::sync::Arc;

/// Purges stored answers, in this process and in every process sharing the
/// backend: from [`CoalesceLayer::purger`](crate::CoalesceLayer::purger).
/// Cheap to clone; keep one in an axum handler's state.
///
/// Each purge returns once the backend has recorded it and announced it
/// (for [`RedisBackend`](crate::RedisBackend): one script and one message;
/// the other processes drop what it names when the message reaches them).
/// From then on, this process serves nothing it names; flights under way
/// for it give their answers to the callers already waiting but do not
/// store them, and requests that arrive after it start new flights.
pub struct Purger<E = HttpKey> {
    pub(crate) shared: Arc<Shared<E>>,
}

impl<E> Clone for Purger<E> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<E> std::fmt::Debug for Purger<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Purger").finish_non_exhaustive()
    }
}

impl<E> Purger<E> {
    pub(crate) fn new(shared: Arc<Shared<E>>) -> Self {
        Self { shared }
    }

    /// Purges what `purge` names.
    ///
    /// Purges of one thing asked for while one of it is under way (a burst
    /// of writes to one URL, say) wait for it, then share one more: each
    /// returns once a purge sent after it was asked for is done.
    pub async fn purge(&self, purge: Purge) -> Result<Purged, PurgeError> {
        let target = (purge.target(), matches!(purge, Purge::Written(_)));
        self.shared
            .merges
            .purge(target, self.purge_now(purge))
            .await
    }

    /// What a successful unsafe request purges, given its response's
    /// `headers`.
    pub(crate) fn write_purges<B>(
        &self,
        write: super::Write,
        headers: &http::HeaderMap,
    ) -> Vec<Purge>
    where
        E: KeyExtractor<B>,
    {
        write.purges(&self.shared, headers)
    }

    /// The answer to a successful write whose purges failed, as the
    /// configuration says (see
    /// [`CoalesceConfig::write_purge_failure`](crate::CoalesceConfig::write_purge_failure)).
    pub(crate) fn write_purge_failed<B>(
        &self,
        res: http::Response<crate::CoalesceBody<B>>,
    ) -> http::Response<crate::CoalesceBody<B>> {
        crate::stats::bump(&self.shared.counters.write_purge_failures);
        let failed = http::HeaderValue::from_static("failed");
        let mut res = match self.shared.config.write_purge_failure {
            crate::WritePurgeFailure::Report => res,
            crate::WritePurgeFailure::Fail => {
                let text = "the write was applied, but the stored answers it changes could not be \
                            purged: other instances may serve them until they expire\n";
                let mut failed = http::Response::new(crate::CoalesceBody::full(
                    bytes::Bytes::from_static(text.as_bytes()),
                    None,
                ));
                *failed.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                failed
            }
        };
        res.headers_mut()
            .insert(http::HeaderName::from_static("coalesce-purge"), failed);
        res
    }

    async fn purge_now(&self, purge: Purge) -> Result<Purged, PurgeError> {
        let shared = &self.shared;
        // Requests from now on start new flights; those waiting on the
        // detached ones still get their answers, which are not stored.
        let detached = match &purge {
            Purge::Key(key) => shared.table.detach(|k| k == key),
            Purge::Resource(key) | Purge::Written(key) => {
                shared.table.detach(|k| k.resource() == key.resource())
            }
            Purge::Tag(_) => 0,
        };
        // A flight of the written resource under way here: its answer
        // may be from before the write, and only a record keeps it from
        // being stored.
        let purge = match purge {
            Purge::Written(key) if detached > 0 => Purge::Resource(key),
            purge => purge,
        };
        let config = &shared.config;
        let started = std::time::Instant::now();
        let purged =
            crate::backend_call::bounded(config.backend_timeout, config.backend.purge(&purge))
                .await;
        let op = crate::backend_call::Op::Purge;
        shared.meter.backend_call(op, started.elapsed());
        match purged {
            Ok(purged) => {
                crate::stats::bump(&shared.counters.purges);
                // What this process held of it is gone.
                shared.meter.near_cache();
                tracing::debug!(?purge, position = purged.position, "purged");
                Ok(purged)
            }
            Err(error) => {
                tracing::warn!(%error, ?purge, "purge not recorded by the backend");
                Err(PurgeError::backend(error))
            }
        }
    }

    /// Purges the answers stored under `key`.
    pub async fn purge_key(&self, key: &Key) -> Result<Purged, PurgeError> {
        self.purge(Purge::Key(key.clone())).await
    }

    /// Purges every answer of `key`'s resource: all its variants and
    /// methods.
    pub async fn purge_resource(&self, key: &Key) -> Result<Purged, PurgeError> {
        self.purge(Purge::Resource(key.clone())).await
    }

    /// Purges every answer carrying `tag`.
    pub async fn purge_tag(&self, tag: &str) -> Result<Purged, PurgeError> {
        self.purge(Purge::Tag(Tag::new(tag)?)).await
    }

    /// Purges every answer for `url` (all its variants and methods): the
    /// resource the layer's extractor gives a `GET` of it. For an absolute
    /// URL (`http://shop.example/products/7`), both the forms a server sees
    /// such a request in: HTTP/1.1's path with `Host: shop.example`, and
    /// HTTP/2's absolute URI. A path alone (`/products/7?view=full`) is keyed
    /// as a request without `Host`, which matches only where the extractor
    /// leaves the authority out ([`HttpKey::without_authority`]); otherwise
    /// name the host, or purge by tag.
    pub async fn purge_url(&self, url: &str) -> Result<Purged, PurgeError>
    where
        E: KeyExtractor<Empty<Bytes>>,
    {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| PurgeError::not_keyed(format!("{url:?} is not a URL: {e}")))?;
        let mut keys = Vec::with_capacity(2);
        if let Some(authority) = uri.authority() {
            let host = http::HeaderValue::from_str(authority.as_str())
                .map_err(|_| PurgeError::not_keyed(format!("{url:?}: a bad authority")))?;
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let origin_form = path
                .parse()
                .map_err(|e| PurgeError::not_keyed(format!("{url:?}: {e}")))?;
            keys.push(self.key_of(origin_form, Some(host)));
        }
        keys.push(self.key_of(uri, None));
        let keys: Vec<Key> = keys.into_iter().flatten().collect();
        if keys.is_empty() {
            return Err(PurgeError::not_keyed(format!(
                "the layer's extractor gives a GET of {url} no key"
            )));
        }
        let mut last = None;
        for key in dedup(keys) {
            last = Some(self.purge(Purge::Resource(key)).await?);
        }
        Ok(last.expect("at least one key"))
    }

    /// The key the extractor gives a `GET` of `uri` with this `Host`.
    fn key_of(&self, uri: http::Uri, host: Option<http::HeaderValue>) -> Option<Key>
    where
        E: KeyExtractor<Empty<Bytes>>,
    {
        let mut req = http::Request::new(Empty::new());
        if let Some(host) = host {
            req.headers_mut().insert(http::header::HOST, host);
        }
        *req.uri_mut() = uri;
        self.shared.extracted(|extractor| extractor.extract(&req))
    }
}

/// The keys with distinct resources (two forms may key alike).
fn dedup(keys: Vec<Key>) -> Vec<Key> {
    let mut out: Vec<Key> = Vec::with_capacity(keys.len());
    for key in keys {
        if !out.iter().any(|k| k.resource() == key.resource()) {
            out.push(key);
        }
    }
    out
}

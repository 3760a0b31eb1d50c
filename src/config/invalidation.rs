//! The settings of invalidation: where answers' tags come from, and whether
//! unsafe requests purge what they change.

use super::CoalesceConfig;
use http::HeaderName;
use std::sync::Arc;

/// A function giving an answer's tags from its request and response heads.
pub(crate) type TagsFn =
    Arc<dyn Fn(&http::request::Parts, &http::response::Parts) -> Vec<String> + Send + Sync>;

impl CoalesceConfig {
    /// The response header whose values tag the answer (for example
    /// `surrogate-key`, as Fastly's, or `cache-tag`): tags separated by
    /// spaces or commas, each one to 256 bytes of visible ASCII; anything
    /// else in it is ignored, as are tags past the 64th. Each can then be
    /// purged with [`Purger::purge_tag`](crate::Purger::purge_tag). The
    /// header is removed from the answer before it reaches a client (and
    /// is not stored), unless [`keep_tag_header`](Self::keep_tag_header).
    /// Default: none.
    pub fn tag_header(mut self, name: HeaderName) -> Self {
        self.tag_header = Some(name);
        self
    }

    /// Whether the [tag header](Self::tag_header) stays on the answers
    /// clients get (default `false`: it is removed, as a CDN removes
    /// `Surrogate-Key`).
    pub fn keep_tag_header(mut self, keep: bool) -> Self {
        self.keep_tag_header = keep;
        self
    }

    /// Tags an answer from its request and response heads, besides those
    /// of the [tag header](Self::tag_header): for example a product id from
    /// the path. Called once per flight, on the origin's answer; names that
    /// are not tags are ignored.
    pub fn tags(
        mut self,
        tags: impl Fn(&http::request::Parts, &http::response::Parts) -> Vec<String>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.tags = Some(Arc::new(tags));
        self
    }

    /// Whether a successful (`2xx` or `3xx`) answer to a request with an
    /// unsafe method (`POST`, `PUT`, `DELETE`, `PATCH`, or one of unknown
    /// safety) purges the stored answers for its URL, all variants and
    /// methods, in every process sharing the backend (RFC 9111 §4.4); and
    /// those of the URLs its `Location` and `Content-Location` name, if
    /// they are of the request's origin (its host and port: another site's
    /// answers are not a response's to purge) and the extractor keys
    /// request heads ([`KeyExtractor::extract_head`](crate::KeyExtractor::extract_head),
    /// as [`HttpKey`](crate::HttpKey) does). On by default. Only requests
    /// the layer does not key count: a coalesced gRPC call is a `POST`,
    /// and does not purge its method's answers.
    ///
    /// The response is given once the purges are recorded, so that the
    /// client's next read finds the new data: one backend call per URL
    /// (for `RedisBackend`, two round trips, the URLs at once). Writes to
    /// one URL that succeed while its purge is under way share the next
    /// one (see [`Purger::purge`](crate::Purger::purge)): a burst of writes
    /// to one URL costs two purges at a time, not one per write.
    pub fn invalidate_on_unsafe(mut self, on: bool) -> Self {
        self.invalidate_on_unsafe = on;
        self
    }

    /// What a write's caller gets when the write succeeded but the purges
    /// it calls for (see [`invalidate_on_unsafe`](Self::invalidate_on_unsafe))
    /// could not be recorded, so that other processes may serve what it
    /// changed until their answers expire. Either way the failure is
    /// counted ([`Stats::write_purge_failures`](crate::Stats::write_purge_failures))
    /// and logged, and the response carries `Coalesce-Purge: failed`.
    /// Default: [`WritePurgeFailure::Report`].
    pub fn write_purge_failure(mut self, on_failure: WritePurgeFailure) -> Self {
        self.write_purge_failure = on_failure;
        self
    }
}

/// What a successful write's caller gets when its purges failed: see
/// [`CoalesceConfig::write_purge_failure`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WritePurgeFailure {
    /// The origin's answer, with `Coalesce-Purge: failed`: the write
    /// happened, and the client may check what it reads next (or purge
    /// again).
    #[default]
    Report,
    /// `500 Internal Server Error` instead of the origin's answer (with
    /// `Coalesce-Purge: failed`): for clients that must not take a write
    /// as done while other processes may still serve what it replaced.
    /// The write itself did happen; a client that retries repeats it.
    Fail,
}

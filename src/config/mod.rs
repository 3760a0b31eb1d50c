//! [`CoalesceConfig`]: every setting of the layer, with its default.

mod bounds;
mod invalidation;
mod lifecycle;
mod observe;
mod validate;

pub(crate) use invalidation::TagsFn;

use crate::backend::{Backend, MemoryBackend};
use crate::Freshness;
use http::{header, HeaderName, Method};
pub use invalidation::WritePurgeFailure;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
pub use validate::ConfigError;

/// What a flight's callers get when it has not landed by the wait timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WaitFallback {
    /// Every caller of the flight, its leader's included, gets `504 Gateway
    /// Timeout` with a [`FlightError`](crate::FlightError) of kind
    /// `WaitTimeout` in the response's extensions, and the inner call is
    /// dropped (a lease it held is released at once). The default: an origin
    /// that is already slow is not handed more load, and an inner service
    /// that never answers holds nothing for longer than the wait timeout.
    #[default]
    GatewayTimeout,
    /// One of the followers leads a new flight, which calls the inner
    /// service at once (without waiting on another process's lease again),
    /// and the others follow it: not every follower calls the origin at
    /// the same instant. The first flight's inner call goes on for its own
    /// caller. Nothing is timed out: answers come as late as the inner
    /// service gives them.
    CallOrigin,
}

/// The layer's settings. Builder methods consume and return the config.
///
/// ```
/// use std::time::Duration;
/// use tower_coalesce::{CoalesceConfig, MemoryBackend, WaitFallback};
///
/// let config = CoalesceConfig::new()
///     .ttl(Duration::from_secs(5))
///     .max_stored_bytes(256 * 1024)
///     .wait_timeout(Duration::from_secs(10))
///     .wait_fallback(WaitFallback::CallOrigin)
///     .backend(MemoryBackend::builder().max_entries(1_000).build())
///     .outcome_header("x-coalesce");
/// ```
#[derive(Clone)]
pub struct CoalesceConfig {
    pub(crate) freshness: Freshness,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) early_refresh: f64,
    pub(crate) stale_if_error: Duration,
    pub(crate) client_directives: bool,
    pub(crate) normalize_accept_encoding: bool,
    pub(crate) revalidation_retention: Duration,
    pub(crate) store_server_errors: bool,
    /// Targeted cache-control fields, in their order of precedence.
    pub(crate) targeted: Vec<HeaderName>,
    /// This cache's own targeted field, taken off the answers.
    pub(crate) own_cache_control: Option<HeaderName>,
    pub(crate) max_stored_bytes: usize,
    pub(crate) stream_window: usize,
    pub(crate) wait_timeout: Duration,
    pub(crate) direct_timeout: Option<Duration>,
    pub(crate) wait_fallback: WaitFallback,
    pub(crate) complete_abandoned: bool,
    pub(crate) backend_timeout: Duration,
    pub(crate) backend_cooldown: Duration,
    pub(crate) lease: Duration,
    pub(crate) pass_ttl: Duration,
    pub(crate) pass_memory: usize,
    pub(crate) methods: Vec<Method>,
    pub(crate) credentials: Vec<HeaderName>,
    pub(crate) outcome_header: Option<HeaderName>,
    pub(crate) cache_status: Option<String>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics_label: String,
    pub(crate) tag_header: Option<HeaderName>,
    pub(crate) keep_tag_header: bool,
    pub(crate) tags: Option<TagsFn>,
    pub(crate) invalidate_on_unsafe: bool,
    pub(crate) write_purge_failure: WritePurgeFailure,
    pub(crate) backend: Arc<dyn Backend>,
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CoalesceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("CoalesceConfig");
        d.field("freshness", &self.freshness)
            .field("stale_while_revalidate", &self.stale_while_revalidate)
            .field("early_refresh", &self.early_refresh)
            .field("stale_if_error", &self.stale_if_error)
            .field("client_directives", &self.client_directives)
            .field("normalize_accept_encoding", &self.normalize_accept_encoding)
            .field("revalidation_retention", &self.revalidation_retention)
            .field("max_stored_bytes", &self.max_stored_bytes)
            .field("stream_window", &self.stream_window)
            .field("wait_timeout", &self.wait_timeout)
            .field("direct_timeout", &self.direct_timeout)
            .field("wait_fallback", &self.wait_fallback)
            .field("complete_abandoned", &self.complete_abandoned)
            .field("backend_timeout", &self.backend_timeout)
            .field("backend_cooldown", &self.backend_cooldown)
            .field("lease", &self.lease)
            .field("pass_ttl", &self.pass_ttl)
            .field("pass_memory", &self.pass_memory)
            .field("methods", &self.methods)
            .field("credentials", &self.credentials)
            .field("outcome_header", &self.outcome_header)
            .field("cache_status", &self.cache_status)
            .field("tag_header", &self.tag_header)
            .field("keep_tag_header", &self.keep_tag_header)
            .field("tags", &self.tags.is_some())
            .field("invalidate_on_unsafe", &self.invalidate_on_unsafe)
            .field("write_purge_failure", &self.write_purge_failure);
        #[cfg(feature = "metrics")]
        d.field("metrics_label", &self.metrics_label);
        d.finish_non_exhaustive()
    }
}

impl CoalesceConfig {
    /// The longest any duration setting may be: a year. Longer values are
    /// refused by [`validate`](Self::validate) rather than overflow a
    /// deadline later.
    pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

    /// Whether answers are stored at all (origin freshness, or a fixed
    /// `ttl` above zero).
    pub(crate) fn stores(&self) -> bool {
        match self.freshness {
            Freshness::Fixed(ttl) => !ttl.is_zero(),
            Freshness::Origin(_) => true,
        }
    }

    /// The defaults: coalesce concurrent requests but store nothing (`ttl`
    /// zero), keep answers up to 1 MiB whole (larger ones stream to their
    /// flight's callers within an 8 MiB window), followers wait up to 30 s and then
    /// answer `504`, abandoned flights complete, backend operations are
    /// given up after 250 ms and a failing backend is skipped for 1 s, no
    /// outcome header, the embedded [`MemoryBackend`]; `GET` and `HEAD`
    /// coalesce, and requests with `Authorization`, `Proxy-Authorization`
    /// or `Cookie` bypass unless keyed; keys whose answers cannot be shared
    /// are remembered for 5 s in at most 1 MiB.
    pub fn new() -> Self {
        Self {
            freshness: Freshness::Fixed(Duration::ZERO),
            stale_while_revalidate: Duration::ZERO,
            early_refresh: 0.0,
            stale_if_error: Duration::ZERO,
            client_directives: true,
            normalize_accept_encoding: false,
            revalidation_retention: Duration::from_secs(600),
            store_server_errors: false,
            targeted: Vec::new(),
            own_cache_control: None,
            max_stored_bytes: 1024 * 1024,
            stream_window: 8 * 1024 * 1024,
            wait_timeout: Duration::from_secs(30),
            direct_timeout: None,
            wait_fallback: WaitFallback::GatewayTimeout,
            complete_abandoned: true,
            backend_timeout: Duration::from_millis(250),
            backend_cooldown: Duration::from_secs(1),
            lease: Duration::from_secs(10),
            pass_ttl: Duration::from_secs(5),
            pass_memory: 1024 * 1024,
            methods: vec![Method::GET, Method::HEAD],
            credentials: vec![
                header::AUTHORIZATION,
                header::PROXY_AUTHORIZATION,
                header::COOKIE,
            ],
            outcome_header: None,
            cache_status: None,
            #[cfg(feature = "metrics")]
            metrics_label: Self::DEFAULT_METRICS_LABEL.to_owned(),
            tag_header: None,
            keep_tag_header: false,
            tags: None,
            invalidate_on_unsafe: true,
            write_purge_failure: WritePurgeFailure::Report,
            backend: Arc::new(MemoryBackend::new()),
        }
    }

    /// The largest body that is kept whole and may be stored (default
    /// 1 MiB). It decides storing only: an answer of any size is shared
    /// with every caller of its flight, streamed as it arrives.
    pub fn max_stored_bytes(mut self, bytes: usize) -> Self {
        self.max_stored_bytes = bytes;
        self
    }

    /// The former name of [`max_stored_bytes`](Self::max_stored_bytes),
    /// from when larger answers were not shared.
    #[deprecated(
        since = "0.2.0",
        note = "renamed `max_stored_bytes`: the size decides storing, not sharing"
    )]
    pub fn max_body_bytes(self, bytes: usize) -> Self {
        self.max_stored_bytes(bytes)
    }

    /// How many of its latest bytes a flight keeps of an answer too large
    /// to store (default 8 MiB, and never less than
    /// [`max_stored_bytes`](Self::max_stored_bytes)). The origin is read at
    /// its own pace: a caller that reads more slowly and falls further
    /// behind gets an error on its body (never a body with bytes missing),
    /// and once the window has moved past the first byte, new callers start
    /// a new flight.
    pub fn stream_window(mut self, bytes: usize) -> Self {
        self.stream_window = bytes;
        self
    }

    /// How long a flight may take to its answer's head, counted from its
    /// start: no caller of it waits longer, whenever it joined. At this
    /// time the flight ends by the [fallback](Self::wait_fallback). It
    /// includes a wait for another instance's flight. One timer per flight,
    /// none per follower. Once the head is out, a body that sends nothing
    /// for this long fails every caller's body.
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// What a flight's callers get at the wait timeout.
    pub fn wait_fallback(mut self, fallback: WaitFallback) -> Self {
        self.wait_fallback = fallback;
        self
    }

    /// Whether a flight whose callers have all gone still runs to the end
    /// (the default) and stores its answer, or is cancelled.
    ///
    /// Completing is the default because in a stampede the callers often give
    /// up together (a client timeout shorter than the slow query): cancelling
    /// would throw the query away and every retry would start it again.
    pub fn complete_abandoned(mut self, complete: bool) -> Self {
        self.complete_abandoned = complete;
        self
    }

    /// The longest a flight waits on one backend operation (lookup or store)
    /// before going on without it; the failure is counted in
    /// [`Stats::backend_errors`](crate::Stats::backend_errors). This bound holds
    /// whatever the backend does inside (a Redis client reconnecting, say), so a
    /// slow or absent backend delays a flight by at most this much.
    pub fn backend_timeout(mut self, timeout: Duration) -> Self {
        self.backend_timeout = timeout;
        self
    }

    /// How long flights skip a backend that failed 3 times in a row (errors
    /// or [timeouts](Self::backend_timeout)); default 1 s, zero never skips.
    ///
    /// While it is skipped, flights neither look up, lease nor store: they
    /// call the origin at once, coalescing within this process only, instead
    /// of each waiting up to `backend_timeout` on a backend that is down or
    /// stalled. Skips are counted in
    /// [`Stats::backend_skipped`](crate::Stats::backend_skipped). After the
    /// cool-down the next flights try the backend again: one success ends
    /// the skipping, one more failure starts another cool-down. A flight
    /// that holds a lease still renews, completes and releases it.
    pub fn backend_cooldown(mut self, cooldown: Duration) -> Self {
        self.backend_cooldown = cooldown;
        self
    }

    /// How long a flight's lease on its key lasts across processes (default
    /// 10 s), with a backend that has leases ([`RedisBackend`](crate::RedisBackend)).
    ///
    /// The leader renews it every third of a lease while the origin call
    /// runs, so a slow call keeps it; a crashed leader's lease ends within
    /// this time, and a waiting process then takes over. Waiting processes
    /// look again once per lease, so a shorter lease means faster takeover
    /// and a few more Redis commands per slow flight. Cross-process
    /// coalescing hands answers over through the store, so it needs a
    /// [`ttl`](Self::ttl) above zero.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a key whose answer could not be shared (private,
    /// `Set-Cookie`, `no-store`) is remembered as pass-through (default 5 s; zero
    /// turns this off). Requests for it then go straight to the inner service
    /// with [`Outcome::Pass`](crate::Outcome::Pass), rather than waiting, one
    /// flight after another, for answers they would not be given.
    pub fn pass_ttl(mut self, ttl: Duration) -> Self {
        self.pass_ttl = ttl;
        self
    }

    /// How much memory the pass-through memory of [`pass_ttl`](Self::pass_ttl)
    /// may use (default 1 MiB). It keeps a 16-byte digest of each key, not
    /// the key, and counts [`PASS_ENTRY_BYTES`](Self::PASS_ENTRY_BYTES) per
    /// key with the cache's own bookkeeping: 1 MiB holds about 8,000 keys,
    /// however long the keys are. When it is full, the least used are
    /// forgotten (they then lead a flight again).
    pub fn pass_memory(mut self, bytes: usize) -> Self {
        self.pass_memory = bytes;
        self
    }

    /// What one key costs in the pass-through memory: its digest and the
    /// cache's bookkeeping for it (an estimate).
    pub const PASS_ENTRY_BYTES: usize = 128;

    /// The request methods that may coalesce (default `GET` and `HEAD`);
    /// requests with any other method bypass, whatever the extractor says.
    ///
    /// Only methods whose answer depends on nothing but the key belong here:
    /// safe methods (RFC 9110 §9.2.1), or for example the `POST` of gRPC
    /// unary calls whose extractor keys the whole request message. A `HEAD`
    /// shares the answer of a `GET`: one that leads a flight asks the inner
    /// service with `GET` (as Varnish and nginx's `proxy_cache_convert_head`
    /// do), so that its answer can serve both, and `HEAD` callers get it
    /// without its body.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Adds a request header that carries a credential, such as `X-Api-Key`:
    /// a request carrying it bypasses the layer unless the extractor keys
    /// that header ([`KeyExtractor::keys_header`](crate::KeyExtractor::keys_header)),
    /// which gives each credential its own answers. `Authorization`,
    /// `Proxy-Authorization` and `Cookie` are always in the list.
    pub fn credential_header(mut self, name: HeaderName) -> Self {
        if !self.credentials.contains(&name) {
            self.credentials.push(name);
        }
        self
    }

    /// Where answers are stored. The default is a [`MemoryBackend`] of its own.
    pub fn backend(mut self, backend: impl Backend) -> Self {
        self.backend = Arc::new(backend);
        self
    }

    /// Shares one backend value between several configs.
    pub fn shared_backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = backend;
        self
    }
}

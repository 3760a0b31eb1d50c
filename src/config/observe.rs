//! The settings of what the layer tells about its answers besides them:
//! the outcome header, its `Cache-Status` member, and the label of its
//! metrics.

use super::CoalesceConfig;
use http::HeaderName;

impl CoalesceConfig {
    /// Also write each response's [`Outcome`](crate::Outcome) as this header
    /// (`hit`, `leader`, `follower`, `bypass` or `pass`). Off by default.
    ///
    /// # Panics
    /// If `name` is not a valid header name; use
    /// [`outcome_header_name`](Self::outcome_header_name) with a checked one.
    pub fn outcome_header(self, name: &'static str) -> Self {
        self.outcome_header_name(Some(HeaderName::from_static(name)))
    }

    /// Sets or clears the outcome header with a checked [`HeaderName`].
    pub fn outcome_header_name(mut self, name: Option<HeaderName>) -> Self {
        self.outcome_header = name;
        self
    }

    /// Also add this cache's member to each response's `Cache-Status`
    /// (RFC 9211), named `name` (a token, such as `tower-coalesce` or the
    /// host's name), after any member the origin's response already
    /// carries: `hit; ttl=N` from storage (`N` negative when stale),
    /// `fwd=miss; fwd-status=S` for a flight's leader, with `collapsed` for
    /// its followers, `fwd=bypass` for requests the layer does not handle
    /// (`detail=pass` for keys whose answers cannot be shared),
    /// `detail=not-cached` for an `only-if-cached` with nothing stored.
    /// Off by default.
    pub fn cache_status(mut self, name: impl Into<String>) -> Self {
        self.cache_status = Some(name.into());
        self
    }

    /// The value of the `layer` label on every series this layer reports
    /// to the `metrics` facade (default `"default"`), so that two layers in
    /// one process (an API and its admin routes, say) can be told apart.
    ///
    /// ```
    /// use tower_coalesce::{CoalesceConfig, CoalesceLayer};
    ///
    /// let api = CoalesceLayer::new(CoalesceConfig::new().metrics_label("api"));
    /// let admin = CoalesceLayer::new(CoalesceConfig::new().metrics_label("admin"));
    /// # let _ = (api, admin);
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics_label(mut self, label: impl Into<String>) -> Self {
        self.metrics_label = label.into();
        self
    }

    /// The `layer` label of a layer that was given none.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub const DEFAULT_METRICS_LABEL: &'static str = "default";
}

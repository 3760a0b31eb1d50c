//! The settings of the cache lifecycle: how long answers are fresh, how
//! long they may then be served stale, when they are refreshed, and what a
//! client may ask of them.

use super::CoalesceConfig;
use crate::Freshness;
use http::HeaderName;
use std::time::Duration;

impl CoalesceConfig {
    /// How long an answer stays in the backend and answers later requests
    /// without a flight, whatever the origin's freshness headers say
    /// ([`Freshness::Fixed`]). Zero (the default) stores nothing: only
    /// requests that arrive while a flight is under way share its answer.
    /// The application knows how stale its data may be; the layer does not
    /// guess.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.freshness = Freshness::Fixed(ttl);
        self
    }

    /// With a fixed [`ttl`](Self::ttl): how long, once an answer's `ttl` is
    /// over, it is still served — at once, as
    /// [`Outcome::Stale`](crate::Outcome::Stale) — while one refresh fetches
    /// the next (default zero: never served stale). The backend keeps each
    /// answer for `ttl` plus this window. With origin freshness, the
    /// origin's `stale-while-revalidate` decides instead (see
    /// [`OriginFreshness::max_stale`](crate::OriginFreshness::max_stale)).
    ///
    /// One refresh runs per key at a time in a process, and with
    /// [`RedisBackend`](crate::RedisBackend) one among every process: it
    /// takes the key's lease only while the stored answer is still the
    /// stale one it saw. A refresh runs detached from any caller, for at
    /// most [`wait_timeout`](Self::wait_timeout); one that fails leaves the
    /// stale answer to be served, and is tried again by the next request
    /// after it ended.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = window;
        self
    }

    /// Whether server errors (`5xx`) whose answer carries explicit
    /// freshness (`s-maxage`, `max-age` or `Expires`) are stored, as any
    /// other answer (default `false`: a `5xx` goes to its flight's callers,
    /// in every instance, and is never stored). Even then, a `5xx` never
    /// replaces a stored answer that may stand in for it
    /// (stale-if-error): the stale answer is served, and stays. With a
    /// fixed [`ttl`](Self::ttl), it is the origin's explicit freshness that
    /// makes a `5xx` storable; it is then kept for the fixed ttl.
    pub fn store_server_errors(mut self, store: bool) -> Self {
        self.store_server_errors = store;
        self
    }

    /// Targeted cache-control fields (RFC 9213), such as
    /// `CDN-Cache-Control`, in their order of precedence (none by default).
    /// The first of them an answer carries with a valid, non-empty value (a
    /// Dictionary structured field, RFC 8941) decides this cache's storage
    /// and freshness in place of `Cache-Control` and `Expires`, which it then
    /// ignores: `private`, `no-store`, `no-cache`, `max-age`, `s-maxage`,
    /// `must-revalidate` and the stale windows count as in `Cache-Control`.
    /// An invalid or empty one is ignored. These fields are passed on
    /// downstream; see [`own_cache_control`](Self::own_cache_control) for
    /// one that is not. Applies with a fixed [`ttl`](Self::ttl) too, where
    /// it decides what may be stored and the stale windows, as
    /// `Cache-Control` does.
    pub fn targeted_cache_control(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        let own = self.own_cache_control.clone();
        self.targeted = own.into_iter().chain(names).collect();
        self
    }

    /// This cache's own targeted cache-control field (e.g.
    /// `Coalesce-Cache-Control`): first in precedence among the
    /// [targeted fields](Self::targeted_cache_control), and taken off the
    /// answers (it speaks to this cache only).
    pub fn own_cache_control(mut self, name: HeaderName) -> Self {
        if let Some(old) = self.own_cache_control.take() {
            self.targeted.retain(|n| *n != old);
        }
        self.targeted.insert(0, name.clone());
        self.own_cache_control = Some(name);
        self
    }

    /// With a fixed [`ttl`](Self::ttl): how long, once an answer's `ttl` is
    /// over, it is served instead of an error — the inner service failing,
    /// its body failing, a `5xx`, or no answer within the wait timeout — as
    /// [`Outcome::Stale`](crate::Outcome::Stale) (`Stats::stale_on_error`;
    /// default zero). A failed refresh inside the
    /// [`stale_while_revalidate`](Self::stale_while_revalidate) window
    /// leaves the stale answer served anyway. The backend keeps each answer
    /// for `ttl` plus the longer of the two windows. With origin freshness,
    /// the origin's `stale-if-error` decides instead.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = window;
        self
    }

    /// Whether a client's `Cache-Control` (and `Pragma: no-cache`) is
    /// honoured (default on), as RFC 9111 §5.2.1 asks: `no-cache`,
    /// `max-age=0` and `Pragma: no-cache` are never answered from storage,
    /// `max-age=N` and `min-fresh=N` not by a stored answer older or less
    /// fresh than that, and `only-if-cached` gets `504` when this process
    /// holds no stored answer (with Redis: none in its near cache). Such a
    /// request still joins the flight under way for its key, so a flood of
    /// them costs one origin call per flight; when it leads one, the stored
    /// answer is revalidated. Off, as nginx and Varnish behave by default:
    /// the layer ignores them (they still reach the inner service on the
    /// requests that do).
    pub fn client_directives(mut self, honoured: bool) -> Self {
        self.client_directives = honoured;
        self
    }

    /// Rewrites the `Accept-Encoding` of the requests the layer may coalesce
    /// to one of three values before anything else looks at it (off by
    /// default), as Varnish's documentation advises: `br` if the request
    /// accepts Brotli, else `gzip` if it accepts gzip, else none at all
    /// (identity); a coding with `q=0` counts as not accepted. Answers that
    /// vary on `Accept-Encoding` then make at most three variants, however
    /// many spellings browsers send. The rewritten field is what the origin
    /// receives — an origin that would have answered `zstd` gets no chance
    /// to — so a follower never gets a coding its own field did not accept.
    pub fn normalize_accept_encoding(mut self, on: bool) -> Self {
        self.normalize_accept_encoding = on;
        self
    }

    /// How long an answer with validators (`ETag`, `Last-Modified`) is kept
    /// past the windows in which it may be served, for revalidation only
    /// (default 10 minutes, as nginx's `inactive`; zero keeps nothing
    /// past them). Such an answer is never served without a `304` that
    /// renews it (RFC 9111 §4.3): the flight that finds it asks the origin
    /// with its validators, and a `304` renews its headers and freshness
    /// for every caller, without a body. Answers with `no-cache` are
    /// stored this way only (they must be revalidated at every use).
    pub fn revalidation_retention(mut self, retention: Duration) -> Self {
        self.revalidation_retention = retention;
        self
    }

    /// Refreshes a hot answer before its freshness ends, so that it is never
    /// stale: on each hit, with a probability that grows as the end nears
    /// (probabilistic early expiration, "XFetch": Vattani, Chierichetti and
    /// Lowenstein, VLDB 2015), a hit starts a refresh when
    /// `took × beta × −ln(random) ≥ freshness left`, `took` being how long
    /// the origin took to make the answer. `beta` 1.0 is the paper's
    /// choice; larger refreshes earlier; 0 (the default) never. The refresh
    /// is the one of [`stale_while_revalidate`](Self::stale_while_revalidate):
    /// one per key in a process and among processes sharing a Redis,
    /// detached from every caller; the hit is answered at once.
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.early_refresh = beta;
        self
    }

    /// How long stored answers stay fresh: a fixed time (as
    /// [`ttl`](Self::ttl) sets it), or what the origin says, by RFC 9111
    /// ([`Freshness::Origin`]) — for a proxy in front of a service that
    /// sends `Cache-Control`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_coalesce::{CoalesceConfig, Freshness, OriginFreshness};
    ///
    /// let config = CoalesceConfig::new().freshness(Freshness::Origin(
    ///     OriginFreshness::new().max_ttl(Duration::from_secs(3600)),
    /// ));
    /// ```
    pub fn freshness(mut self, freshness: Freshness) -> Self {
        self.freshness = freshness;
        self
    }
}

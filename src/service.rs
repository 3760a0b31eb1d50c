//! [`CoalesceService`]: decides, for each request, between bypass, hit,
//! leading a flight and following one.

use crate::conditions::Asked;
use crate::future::ResponseFuture;
use crate::shared::Shared;
use crate::stats::bump;
use crate::{BoxError, CoalesceBody, KeyExtractor};
use bytes::Bytes;
use http::{Request, Response};
use std::fmt::Display;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// The service made by [`CoalesceLayer`](crate::CoalesceLayer).
///
/// Its error type is the inner service's: the only errors it returns are the
/// inner service's own, to the caller whose request produced them. Failures
/// the layer reports to other requests are responses (see
/// [`FlightError`](crate::FlightError)).
///
/// The inner service's work for a keyed request runs in a task of its own, so
/// a caller that goes away never cancels the answer its followers wait for.
/// That is why the inner service, its future and the bodies must be `Send +
/// 'static`, and why calls must be made inside a Tokio runtime.
pub struct CoalesceService<S, E> {
    inner: S,
    shared: Arc<Shared<E>>,
}

impl<S, E> CoalesceService<S, E> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<E>>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, without the layer.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, E> Clone for CoalesceService<S, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: std::fmt::Debug, E> std::fmt::Debug for CoalesceService<S, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalesceService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, E, ReqBody, ResBody> Service<Request<ReqBody>> for CoalesceService<S, E>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Display + Send + 'static,
    E: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<CoalesceBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, E, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        bump(&shared.counters.requests);
        let header = shared.marks.clone();
        if shared.config.normalize_accept_encoding && shared.config.methods.contains(req.method()) {
            crate::vary::normalize_accept_encoding(req.headers_mut());
        }
        let key = shared.key(&req);
        let Some(mut key) = key else {
            tracing::trace!("bypass: no key");
            bump(&shared.counters.bypasses);
            let grpc = crate::error::is_grpc(&req);
            shared.meter.response(crate::Outcome::Bypass);
            if shared.config.invalidate_on_unsafe && !req.method().is_safe() {
                if let Some(write) = crate::purge::Write::of(shared, &mut req) {
                    let purger = crate::Purger::new(self.shared.clone());
                    let future = self.inner.call(req);
                    return ResponseFuture::purging(future, purger, write, grpc);
                }
            }
            let future = self.inner.call(req);
            let outcome = crate::Outcome::Bypass;
            return ResponseFuture::direct(future, outcome, &self.shared, grpc, None);
        };
        let span = crate::trace::request(&req, &key);
        // What the request asks of the cache, if anything (`no-cache`,
        // `max-age`, `only-if-cached`...).
        let asks = shared
            .config
            .client_directives
            .then(|| crate::client::Asks::of(req.headers()))
            .flatten();
        let mut refused = false;
        let held = crate::leader::local_hit(shared, &mut key, req.headers())
            .filter(|entry| {
                refused = asks.as_ref().is_some_and(|asks| !asks.accepts(entry));
                !refused
            })
            .and_then(|entry| {
                // Past its windows, only for a client that takes it stale.
                let outcome = entry.serve_as().or_else(|| {
                    let takes = asks.as_ref()?.takes_stale(&entry, &shared.config.targeted);
                    takes.then_some(crate::Outcome::Stale)
                })?;
                Some((outcome, entry))
            });
        // Nothing of a `no-store` request's exchange is stored: it starts no
        // refresh and leads no flight.
        let no_store = asks.as_ref().is_some_and(crate::client::Asks::no_store);
        if let Some((outcome, entry)) = held {
            shared.meter.response(outcome);
            let refresh = !no_store
                && match outcome {
                    crate::Outcome::Stale => {
                        // Answered at once; one refresh per key fetches the next
                        // answer with this request, detached from it.
                        tracing::trace!(key = %key.fingerprint(), "stale");
                        bump(&shared.counters.stale);
                        true
                    }
                    _ => {
                        tracing::trace!(key = %key.fingerprint(), "hit");
                        bump(&shared.counters.hits);
                        let beta = shared.config.early_refresh;
                        let early = beta > 0.0 && crate::refresh::due_early(&entry, beta);
                        if early {
                            bump(&shared.counters.early_refreshes);
                        }
                        early
                    }
                };
            if !refresh {
                return ResponseFuture::hit(entry, Asked::of(&req), header, span);
            }
            let asked = crate::leader::for_the_flight(&mut req);
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            crate::refresh::start(shared, key, req, inner, &entry);
            return ResponseFuture::stored(entry, asked, outcome, header, span);
        }
        if let Some(asks) = asks {
            if asks.only_if_cached() {
                tracing::debug!(key = %key.fingerprint(), "only-if-cached, and nothing stored: 504");
                shared.meter.response(crate::Outcome::NotCached);
                return ResponseFuture::not_cached(header, span);
            }
            // The flight it may lead must not answer it from storage either.
            req.extensions_mut().insert(asks);
        }
        // After the hit check: hits, the hot path, pay nothing for it, and a
        // fresh stored entry was judged shareable.
        let role = if no_store {
            shared.table.follow(&key).map(crate::flight::Role::Follower)
        } else {
            None
        };
        if shared.passes(&key) || (no_store && role.is_none()) {
            if no_store {
                tracing::debug!(key = %key.fingerprint(), "no-store, and no flight to join: to the origin alone");
            } else {
                tracing::debug!(key = %key.fingerprint(), "pass: the key's answers cannot be shared");
                bump(&shared.counters.passes);
            }
            bump(&shared.counters.origin_calls);
            // Untouched but for this mark: its conditions and range go to
            // the origin, and its answer to this caller alone.
            req.extensions_mut().insert(crate::Outcome::Pass);
            let grpc = crate::error::is_grpc(&req);
            shared.meter.response(crate::Outcome::Pass);
            let future = self.inner.call(req);
            let outcome = crate::Outcome::Pass;
            return ResponseFuture::direct(future, outcome, &self.shared, grpc, span);
        }
        let role = role.unwrap_or_else(|| shared.table.join(&key));
        // The leader's task calls the inner service later, so it takes the
        // service that `poll_ready` readied and leaves a fresh clone in its
        // place (tower's documented idiom). A follower may never call the inner
        // service; it keeps an unreadied clone and readies it only if it must.
        let inner = match role {
            crate::flight::Role::Leader(_) => {
                let clone = self.inner.clone();
                std::mem::replace(&mut self.inner, clone)
            }
            crate::flight::Role::Follower(_) => self.inner.clone(),
        };
        let shared = self.shared.clone();
        let future = crate::coalesced::Coalesced::new(shared, key, role, req, inner, refused, span);
        ResponseFuture::coalesced(future)
    }
}

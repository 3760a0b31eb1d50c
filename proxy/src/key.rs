//! What the proxy coalesces by: [`HttpKey`]'s key, scoped by the upstream
//! and by the name the site is reached by, so that proxies of different
//! sites sharing one Redis never share answers.

use crate::forward::{Forwarding, KEYED_FORWARDING};
use bytes::Bytes;
use http::header::HeaderName;
use http::{Request, Uri};
use tower_coalesce::body_keys::{BodyKeys, BufferLayer, Route};
use tower_coalesce::{HttpKey, Key, KeyExtractor};

/// The key the proxy coalesces by: [`HttpKey`]'s, with the upstream's
/// authority in front of its resource (built by [`proxy_key`]).
///
/// The upstream is keyed because two proxies of different upstreams may
/// share one Redis and be reached by the same name (the `--public-host`, or
/// one balancer's host name): the name alone would have one serve the
/// other's pages.
#[derive(Debug, Clone)]
pub struct ProxyKey {
    http: HttpKey,
    upstream: Bytes,
    /// Whether it keys anything: a route in bypass mode keys nothing.
    on: bool,
    /// The routes keyed by their bodies, if any: then they key every
    /// request, the others by `http`.
    body: Option<BodyKeys>,
}

/// The key for a proxy to `upstream`: [`HttpKey`]'s, so the authority (the
/// client's `Host`, which reaches the upstream as `X-Forwarded-Host`) is in
/// it — unless a public host name is set, which every request then sends
/// instead and is keyed in its place; so every proxy instance shares keys
/// whatever address it listens on. The upstream's authority is keyed in
/// either case. With trusted forwarding headers, those that describe the
/// request rather than the client are keyed.
pub fn proxy_key(upstream: &Uri, forwarding: &Forwarding) -> ProxyKey {
    let mut http = HttpKey::new();
    if let Some(public_host) = &forwarding.public_host {
        http = http.authority(public_host.clone());
    }
    if forwarding.trust {
        for name in KEYED_FORWARDING {
            http = http.vary(HeaderName::from_static(name));
        }
    }
    let upstream = upstream.authority().map_or_else(Bytes::new, |a| {
        Bytes::copy_from_slice(a.as_str().as_bytes())
    });
    ProxyKey {
        http,
        upstream,
        on: true,
        body: None,
    }
}

impl ProxyKey {
    /// The same key, with the values of `headers` in it too.
    pub fn vary(mut self, headers: &[HeaderName]) -> Self {
        self.http = headers.iter().cloned().fold(self.http, HttpKey::vary);
        self
    }

    /// The same key, or (`on` false) one that keys no request, so that
    /// every request bypasses the layer.
    pub fn keying(mut self, on: bool) -> Self {
        self.on = on;
        self
    }

    /// The same key, with `route` keyed by its body (see
    /// [`tower_coalesce::body_keys`]); the other requests as before. Give
    /// the layer [`methods`](Self::methods), and put
    /// [`buffer_layer`](Self::buffer_layer) in front of it (the proxy's
    /// services do both).
    pub fn body_route(mut self, route: Route) -> Self {
        let keys = self
            .body
            .take()
            .unwrap_or_else(|| BodyKeys::new(self.http.clone()));
        self.body = Some(keys.route(route));
        self
    }

    /// The methods the layer must key: `GET` and `HEAD`, and those of the
    /// body-keyed routes.
    pub fn methods(&self) -> Vec<http::Method> {
        match &self.body {
            Some(keys) => keys.methods(),
            None => vec![http::Method::GET, http::Method::HEAD],
        }
    }

    /// What reads the bodies of the body-keyed routes' requests before the
    /// layer keys them; a layer that reads none if there are none.
    pub fn buffer_layer(&self) -> BufferLayer {
        match &self.body {
            Some(keys) => keys.buffer_layer(),
            None => BodyKeys::new(HttpKey::new()).buffer_layer(),
        }
    }

    /// `key` with the upstream in front of its resource; each part framed
    /// by its length, so no upstream name and resource can spell another
    /// pair. A key whose answers are never stored stays so.
    fn scoped(&self, key: Key) -> Key {
        let scoped =
            Key::from_parts([&self.upstream[..], key.resource()]).with_variant([key.variant()]);
        if key.is_flight_only() {
            scoped.flight_only()
        } else {
            scoped
        }
    }
}

impl<B: hyper::body::Body> KeyExtractor<B> for ProxyKey {
    fn keys_header(&self, name: &HeaderName) -> bool {
        match &self.body {
            Some(keys) => KeyExtractor::<B>::keys_header(keys, name),
            None => KeyExtractor::<B>::keys_header(&self.http, name),
        }
    }

    fn extract(&self, req: &Request<B>) -> Option<Key> {
        if !self.on {
            return None;
        }
        let key = match &self.body {
            Some(keys) => keys.extract(req),
            None => self.http.extract(req),
        };
        key.map(|key| self.scoped(key))
    }

    fn extract_head(&self, head: &http::request::Parts) -> Option<Key> {
        if !self.on {
            return None;
        }
        KeyExtractor::<B>::extract_head(&self.http, head).map(|key| self.scoped(key))
    }
}

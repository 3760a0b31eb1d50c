//! What a successful unsafe request invalidates (RFC 9111 §4.4): the
//! stored answers of its target URI, and of the same-origin URIs its
//! response names in `Location` and `Content-Location`.

use super::Purge;
use crate::shared::Shared;
use crate::KeyExtractor;
use http::{header, request, HeaderMap, Method, Request, Uri};

/// An unsafe request the layer does not key, sent on to the inner service:
/// what it purges if it succeeds.
pub(crate) struct Write {
    /// Every answer of its target URI.
    target: Purge,
    /// Its head as a `GET`, to key the URIs its response names; `None` if
    /// the extractor keys no head.
    head: Option<request::Parts>,
}

impl Write {
    /// What the unsafe request `req` purges if it succeeds; `None` if the
    /// extractor gives a `GET` of its target no key.
    pub(crate) fn of<E, B>(shared: &Shared<E>, req: &mut Request<B>) -> Option<Self>
    where
        E: KeyExtractor<B>,
    {
        let head = get_head(req.uri().clone(), req.version(), req.headers());
        if let Some(key) = keyed(shared, &head) {
            return Some(Self {
                target: Purge::Written(key),
                head: Some(head),
            });
        }
        // The request itself, as a `GET`.
        let method = std::mem::replace(req.method_mut(), Method::GET);
        let key = shared.extracted(|extractor| extractor.extract(req));
        *req.method_mut() = method;
        let key = key?;
        Some(Self {
            target: Purge::Written(key),
            head: None,
        })
    }

    /// What to purge now that the request succeeded with a response
    /// carrying `headers`: its target, then what `Location` and
    /// `Content-Location` name on the same origin, each once.
    pub(crate) fn purges<E, B>(self, shared: &Shared<E>, headers: &HeaderMap) -> Vec<Purge>
    where
        E: KeyExtractor<B>,
    {
        let mut purges = vec![self.target];
        let Some(head) = self.head else {
            return purges;
        };
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(uri) = headers
                .get(&name)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| same_origin(&head, value))
            else {
                continue;
            };
            let named = get_head(uri, head.version, &head.headers);
            if let Some(key) = keyed(shared, &named) {
                let purge = Purge::Written(key);
                if !purges.contains(&purge) {
                    purges.push(purge);
                }
            }
        }
        purges
    }
}

/// The extractor's key of `head`; a panic is no key.
fn keyed<E, B>(shared: &Shared<E>, head: &request::Parts) -> Option<crate::Key>
where
    E: KeyExtractor<B>,
{
    shared.extracted(|extractor| extractor.extract_head(head))
}

/// The head of a `GET` of `uri` with these headers.
fn get_head(uri: Uri, version: http::Version, headers: &HeaderMap) -> request::Parts {
    let (mut head, ()) = Request::new(()).into_parts();
    head.uri = uri;
    head.version = version;
    head.headers = headers.clone();
    head
}

/// The URI reference `reference` (from `Location` or `Content-Location`),
/// resolved against the request `head`'s target (RFC 3986 §5), in the form
/// the request's target has (origin-form with `Host`, or absolute): `None`
/// if it is unreadable or names another origin.
///
/// The origin is the request's scheme, host and port; a request in
/// origin-form leaves the scheme to the connection, which the layer does
/// not see, so for it the host and port decide (a missing port being the
/// default of the reference's scheme): a keyed answer names its host, not
/// its scheme, so no other site's answers can be named that way.
fn same_origin(head: &request::Parts, reference: &str) -> Option<Uri> {
    let target = &head.uri;
    let authority = match target.authority() {
        Some(authority) => authority.clone(),
        None => head
            .headers
            .get(header::HOST)?
            .to_str()
            .ok()?
            .parse()
            .ok()?,
    };
    let scheme = target.scheme_str();
    let path = target.path_and_query().map_or("/", |p| p.as_str());
    let base = format!("{}://{authority}{path}", scheme.unwrap_or("http"));
    let base = url::Url::parse(&base).ok()?;
    let named = base.join(reference).ok()?;
    // `url` gives special schemes' hosts in lowercase.
    let same = named.host_str() == base.host_str()
        && match scheme {
            Some(_) => {
                named.scheme() == base.scheme()
                    && named.port_or_known_default() == base.port_or_known_default()
            }
            None => {
                named.port_or_known_default()
                    == authority
                        .port_u16()
                        .or_else(|| default_port(named.scheme()))
            }
        };
    if !same {
        return None;
    }
    let path = match named.query() {
        Some(query) => format!("{}?{query}", named.path()),
        None => named.path().to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{authority}{path}").parse().ok(),
        None => path.parse().ok(),
    }
}

/// The port a URL of `scheme` has when it names none.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

//! What a layer writes on a response besides the outcome extension: its
//! outcome header, and its `Cache-Status` member (RFC 9211).

use super::Outcome;

/// The response headers a layer writes besides the outcome extension: made
/// once per layer, shared by every response's future.
#[derive(Debug)]
pub(crate) struct Marks {
    /// The outcome header's name.
    pub(crate) outcome: Option<http::HeaderName>,
    /// The cache's name in `Cache-Status` (RFC 9211).
    pub(crate) cache_status: Option<String>,
    /// Headers taken off every answer (also those the layer did not
    /// share): the tag header, unless the configuration keeps it, and this
    /// cache's own targeted cache-control field.
    pub(crate) strip: Vec<http::HeaderName>,
}

/// Why a request went forward to the origin, in `Cache-Status` terms
/// (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Fwd {
    /// Nothing usable was stored.
    #[default]
    Miss,
    /// A stored answer was there, but the request's own directives
    /// (`no-cache`, `max-age=0`...) refused it.
    Request,
    /// The stored answer was stale (past any window it could be served in).
    Stale,
}

/// What a response's `Cache-Status` member says besides its outcome: carried
/// in the response's extensions from where it is known to [`mark`], which
/// takes it out. Only put there while `Cache-Status` is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Forwarded {
    /// Why the flight (or this request) went forward.
    pub(crate) why: Fwd,
    /// The answer was stored (`stored`).
    pub(crate) stored: bool,
    /// The request waited on another's forward (`collapsed`).
    pub(crate) collapsed: bool,
    /// A stale answer stood in for the origin's failure (stale-if-error),
    /// with the status the origin answered, if it answered at all.
    pub(crate) rescued: Option<Option<http::StatusCode>>,
    /// A stored answer's freshness left, in seconds, where the response
    /// does not come from [`mark`]'s caller's own entry.
    pub(crate) ttl: Option<i64>,
}

impl Forwarded {
    /// Puts `self` in `res`'s extensions for [`mark`], if `marks` writes
    /// `Cache-Status`.
    pub(crate) fn note<B>(self, res: &mut http::Response<B>, marks: Option<&Marks>) {
        if marks.is_some_and(|m| m.cache_status.is_some()) {
            res.extensions_mut().insert(self);
        }
    }
}

/// Records `outcome` in the response's extensions, and in the headers
/// `marks` asks for. `ttl` is a stored answer's freshness left in seconds
/// (negative once stale), for `Cache-Status`.
pub(crate) fn mark<B>(
    mut res: http::Response<B>,
    outcome: Outcome,
    marks: Option<&Marks>,
    ttl: Option<i64>,
) -> http::Response<B> {
    if let Some(marks) = marks {
        for name in &marks.strip {
            res.headers_mut().remove(name);
        }
        if let Some(name) = &marks.outcome {
            res.headers_mut().insert(
                name.clone(),
                http::HeaderValue::from_static(outcome.as_str()),
            );
        }
        if let Some(cache) = &marks.cache_status {
            let forwarded = res.extensions_mut().remove::<Forwarded>();
            let ttl = ttl.or(forwarded.and_then(|f| f.ttl));
            let member = cache_status(cache, outcome, res.status(), ttl, forwarded);
            if let Ok(value) = http::HeaderValue::from_str(&member) {
                // After any member a cache nearer the origin wrote.
                res.headers_mut().append("cache-status", value);
            }
        }
    }
    res.extensions_mut().insert(outcome);
    res
}

/// This cache's `Cache-Status` member for a response (RFC 9211 §2): `hit`
/// for an answer from storage (`ttl` negative when stale), else how the
/// request was forwarded — `fwd=miss` (or `request`, `stale`) with the
/// origin's status, `stored` when the answer was kept, `collapsed` for a
/// request that waited on another's flight, `fwd=bypass` for one the layer
/// did not handle (no key, or a key whose answers cannot be shared); a stale
/// answer served for a failing origin is `fwd=stale` with the origin's
/// status.
pub(super) fn cache_status(
    cache: &str,
    outcome: Outcome,
    status: http::StatusCode,
    ttl: Option<i64>,
    forwarded: Option<Forwarded>,
) -> String {
    use std::fmt::Write;
    let status = status.as_u16();
    let f = forwarded.unwrap_or(Forwarded {
        collapsed: outcome == Outcome::Follower,
        ..Forwarded::default()
    });
    let why = match f.why {
        Fwd::Miss => "miss",
        Fwd::Request => "request",
        Fwd::Stale => "stale",
    };
    let mut member = match (outcome, f.rescued) {
        (_, Some(failed)) => {
            let mut member = format!("{cache}; fwd=stale");
            if let Some(failed) = failed {
                let _ = write!(member, "; fwd-status={}", failed.as_u16());
            }
            member
        }
        (Outcome::Hit | Outcome::Stale, None) => format!("{cache}; hit"),
        (Outcome::Leader | Outcome::Follower, None) => {
            format!("{cache}; fwd={why}; fwd-status={status}")
        }
        (Outcome::Bypass, None) => format!("{cache}; fwd=bypass"),
        (Outcome::Pass, None) => format!("{cache}; fwd=bypass; detail=pass"),
        (Outcome::NotCached, None) => format!("{cache}; detail=not-cached"),
    };
    if f.stored {
        member.push_str("; stored");
    }
    if f.collapsed {
        member.push_str("; collapsed");
    }
    if let Some(ttl) = ttl {
        let _ = write!(member, "; ttl={ttl}");
    }
    member
}

//! A complete response that may be given to many requests: status, headers,
//! body and trailers, all cheap to share.
//!
//! An entry is immutable once built. Handing it to a follower clones the
//! header map and bumps the body's reference count; the body bytes are never
//! copied per follower.
//!
//! Entries that leave the process travel in a versioned, checksummed binary
//! form ([`Entry::encode`], [`Entry::decode`], in `codec`). Decoding trusts
//! nothing: a value written by another program, by another version, or
//! damaged on the way is an error (and so a miss), never a panic and never a
//! wrong answer.

mod codec;
mod life;
#[cfg(test)]
mod tests;

pub use codec::DecodeError;
#[cfg(test)]
use codec::{MAGIC, MAGIC_V1, MAGIC_V2, MAGIC_V3, MAGIC_V4};
pub(crate) use life::Life;

use crate::purge::Digest16;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Version};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A buffered response, shared by every request that receives it.
///
/// An entry that was [stored](Entry::stored) knows when, and responses made
/// from it carry an `Age` header (RFC 9111 §5.1): how long ago, in whole
/// seconds, the origin produced it. An entry straight from the origin adds no
/// `Age` (an `Age` the origin sent passes as it came).
#[derive(Debug, Clone)]
pub struct Entry {
    inner: Arc<Parts>,
}

#[derive(Debug)]
struct Parts {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
    stored: Option<Stored>,
    fill: Fill,
    /// The latest purge position it was judged not purged at (from its
    /// fill's on), within its fill's epoch: see
    /// [`PurgeLog`](crate::purge::PurgeLog).
    checked: AtomicU64,
}

/// Where an entry's fill stands in the purge order, and what a purge can
/// name it by besides its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Fill {
    /// The latest purge position its process knew when its fill started,
    /// before the origin was called.
    pub(crate) at: crate::PurgePosition,
    /// The digests of its tags.
    pub(crate) tags: Arc<[Digest16]>,
}

#[derive(Debug, Clone, Copy)]
struct Stored {
    /// When, to the millisecond (as encoded).
    at: SystemTime,
    /// The `Age` the origin's response already had.
    initial: Duration,
    /// How long it stays fresh and may then be served stale, if known.
    life: Option<Life>,
}

impl Parts {
    fn checked_at(&self) -> u64 {
        self.checked
            .load(Ordering::Acquire)
            .max(self.fill.at.position)
    }
}

impl Entry {
    /// Builds an entry from a response head, its whole body and its trailers.
    pub fn new(
        status: StatusCode,
        version: Version,
        headers: HeaderMap,
        body: Bytes,
        trailers: Option<HeaderMap>,
    ) -> Self {
        Self::with_parts(Parts {
            status,
            version,
            headers,
            body,
            trailers,
            stored: None,
            fill: Fill::default(),
            checked: AtomicU64::new(0),
        })
    }

    fn with_parts(parts: Parts) -> Self {
        Self {
            inner: Arc::new(parts),
        }
    }

    /// This entry's head and fill with `body` and `trailers`: a streamed
    /// answer, whole.
    pub(crate) fn with_body(&self, body: Bytes, trailers: Option<HeaderMap>) -> Self {
        let p = &*self.inner;
        Self::with_parts(Parts {
            status: p.status,
            version: p.version,
            headers: p.headers.clone(),
            body,
            trailers,
            stored: p.stored,
            fill: p.fill.clone(),
            checked: AtomicU64::new(p.checked_at()),
        })
    }

    /// The same response, stored at `at` (kept to the millisecond, as
    /// encoded): responses made from it carry an `Age` header. The layer
    /// marks every entry it hands to [`Store::store`](crate::Store::store)
    /// this way, so a backend keeps the time by keeping the entry or its
    /// [encoded](Entry::encode) form.
    ///
    /// The stored entry's headers include `Age` (the origin's, or `0`), so
    /// that each response made from it sets the value in place instead of
    /// growing its header map.
    pub fn stored(self, at: SystemTime) -> Self {
        let p = &*self.inner;
        let mut headers = p.headers.clone();
        let initial = initial_age(&headers);
        if !headers.contains_key(http::header::AGE) {
            headers.insert(http::header::AGE, HeaderValue::from_static("0"));
        }
        let at = to_millis(at).and_then(from_millis);
        Self::with_parts(Parts {
            status: p.status,
            version: p.version,
            headers,
            body: p.body.clone(),
            trailers: p.trailers.clone(),
            stored: at.map(|at| Stored {
                at,
                initial,
                life: None,
            }),
            fill: p.fill.clone(),
            checked: AtomicU64::new(p.checked_at()),
        })
    }

    /// The same entry, filled from `at` in the purge order, carrying these
    /// tags (their digests).
    pub(crate) fn filled(mut self, at: crate::PurgePosition, tags: Vec<Digest16>) -> Self {
        if let Some(p) = Arc::get_mut(&mut self.inner) {
            // Just made: set in place.
            p.fill = Fill {
                at,
                tags: tags.into(),
            };
            *p.checked.get_mut() = at.position;
            return self;
        }
        let p = &*self.inner;
        Self::with_parts(Parts {
            status: p.status,
            version: p.version,
            headers: p.headers.clone(),
            body: p.body.clone(),
            trailers: p.trailers.clone(),
            stored: p.stored,
            fill: Fill {
                at,
                tags: tags.into(),
            },
            checked: AtomicU64::new(at.position),
        })
    }

    /// The purge position its process knew when its fill started, before
    /// the origin was called (the start of epoch 0 for an entry not made by
    /// a flight, which is judged as if filled at the start of the current
    /// epoch): a purge
    /// of its key, resource or tags at a later position drops it (see
    /// [`Invalidation`](crate::Invalidation)).
    pub fn fill_position(&self) -> crate::PurgePosition {
        self.inner.fill.at
    }

    /// The [digests](crate::Tag::digest) of its tags.
    pub fn tags(&self) -> &[[u8; 16]] {
        &self.inner.fill.tags
    }

    /// The latest purge position it was judged not purged at.
    pub(crate) fn checked_at(&self) -> u64 {
        self.inner.checked_at()
    }

    /// Judged not purged at `position`.
    pub(crate) fn checked(&self, position: u64) {
        self.inner.checked.fetch_max(position, Ordering::AcqRel);
    }

    /// [`stored`](Self::stored), with its lifetime in storage and, if the
    /// cache computed it (RFC 9111 §4.2.3), the age the answer had on
    /// arrival, which becomes its `Age` in whole seconds.
    pub(crate) fn kept(self, at: SystemTime, age: Option<Duration>, life: Life) -> Self {
        let entry = match age {
            Some(age) => {
                let mut headers = self.inner.headers.clone();
                headers.insert(http::header::AGE, age_value(age));
                Self::with_parts(Parts {
                    status: self.inner.status,
                    version: self.inner.version,
                    headers,
                    body: self.inner.body.clone(),
                    trailers: self.inner.trailers.clone(),
                    stored: None,
                    fill: self.inner.fill.clone(),
                    checked: AtomicU64::new(self.checked_at()),
                })
            }
            None => self,
        };
        let mut entry = entry.stored(at);
        // Just made by `stored`: this is its only reference.
        if let Some(stored) = Arc::get_mut(&mut entry.inner).and_then(|p| p.stored.as_mut()) {
            stored.life = Some(life);
        }
        entry
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.inner.status
    }

    /// The HTTP version of the response.
    pub fn version(&self) -> Version {
        self.inner.version
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.inner.headers
    }

    /// The whole response body.
    pub fn body(&self) -> &Bytes {
        &self.inner.body
    }

    /// The response trailers, if the body had any (gRPC status lives there).
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.inner.trailers.as_ref()
    }

    /// How many bytes the entry holds: body, header and trailer names and
    /// values. The memory backend weighs entries by this.
    pub fn weight(&self) -> usize {
        fn map_len(map: &HeaderMap) -> usize {
            map.iter().map(|(n, v)| n.as_str().len() + v.len()).sum()
        }
        self.inner.body.len()
            + map_len(&self.inner.headers)
            + self.inner.trailers.as_ref().map_or(0, map_len)
    }

    /// A fresh response carrying this entry; the body shares the entry's bytes.
    pub(crate) fn to_response<B>(&self) -> Response<crate::CoalesceBody<B>> {
        let mut res = Response::new(crate::CoalesceBody::full(
            self.inner.body.clone(),
            self.inner.trailers.clone(),
        ));
        *res.status_mut() = self.inner.status;
        *res.version_mut() = self.inner.version;
        *res.headers_mut() = self.inner.headers.clone();
        if let Some(age) = self.age(SystemTime::now()) {
            res.headers_mut().insert(http::header::AGE, age_value(age));
        }
        res
    }
}

/// An `Age` value: whole seconds. Values up to ten minutes, the lifetimes
/// this layer's answers usually have, come from a table made once, so a
/// hit costs no allocation for its `Age` (about a third of a hit's overhead
/// otherwise).
fn age_value(age: Duration) -> HeaderValue {
    const TABLED: u64 = 600;
    static AGES: OnceLock<Box<[HeaderValue]>> = OnceLock::new();
    let secs = age.as_secs();
    if secs == 0 {
        return HeaderValue::from_static("0");
    }
    if secs >= TABLED {
        return HeaderValue::from(secs);
    }
    let ages = AGES.get_or_init(|| {
        (0..TABLED)
            // Leaked once, at most ten minutes' worth of short strings:
            // static values are shared without touching a reference count.
            .map(|n| HeaderValue::from_static(Box::leak(n.to_string().into_boxed_str())))
            .collect()
    });
    ages[secs as usize].clone()
}

/// The `Age` a response already has: whole seconds, anything else is none.
///
/// RFC 9111 §5.1: of a list (`Age: 5, 7`) the first member counts; a value
/// that is not a non-negative integer is ignored; one too large to
/// represent is 2^31 seconds (§1.2.2), never zero.
pub(crate) fn initial_age(headers: &HeaderMap) -> Duration {
    const OVERFLOW: u64 = 1 << 31;
    let Some(first) = headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
    else {
        return Duration::ZERO;
    };
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return Duration::ZERO;
    }
    let secs = first.parse::<u64>().map_or(OVERFLOW, |s| s.min(OVERFLOW));
    Duration::from_secs(secs)
}

/// A time as milliseconds since the Unix epoch, as entries encode it.
pub(crate) fn to_millis(at: SystemTime) -> Option<u64> {
    let since = at.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

pub(crate) fn from_millis(ms: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

//! Validators (RFC 9110 §8.8): entity tags, their lists and comparisons, and
//! HTTP dates.

use http::header::HeaderValue;
use std::time::SystemTime;

/// An entity tag (RFC 9110 §8.8.3): weak or not, and its opaque part.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct EntityTag<'a> {
    pub(super) weak: bool,
    pub(super) opaque: &'a [u8],
}

impl<'a> EntityTag<'a> {
    /// One whole entity tag, nothing around it but whitespace.
    pub(super) fn parse(value: &'a [u8]) -> Option<Self> {
        let (tag, rest) = Self::next(value.trim_ascii())?;
        rest.is_empty().then_some(tag)
    }

    /// The entity tag at the start of `value`, and what follows it.
    fn next(value: &'a [u8]) -> Option<(Self, &'a [u8])> {
        let (weak, value) = match value.strip_prefix(b"W/") {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let inner = value.strip_prefix(b"\"")?;
        let close = inner.iter().position(|&b| b == b'"')?;
        let opaque = &inner[..close];
        // etagc: %x21 / %x23-7E / obs-text.
        if !opaque.iter().all(|&b| b == 0x21 || b >= 0x23 && b != 0x7f) {
            return None;
        }
        Some((EntityTag { weak, opaque }, &inner[close + 1..]))
    }

    pub(super) fn strong_eq(&self, other: &EntityTag<'_>) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    pub(super) fn weak_eq(&self, other: &EntityTag<'_>) -> bool {
        self.opaque == other.opaque
    }
}

/// Whether an `If-Match` / `If-None-Match` list matches the current entity
/// tag: `*` matches any current representation; a list that cannot be
/// read matches nothing (so it never earns a `304`).
pub(super) fn list_matches<'a>(
    values: http::header::GetAll<'a, HeaderValue>,
    current: Option<&EntityTag<'_>>,
    strong: bool,
) -> bool {
    for value in values {
        let mut rest = value.as_bytes().trim_ascii();
        if rest == b"*" {
            return true;
        }
        let Some(current) = current else {
            continue;
        };
        loop {
            rest = rest.trim_ascii_start();
            while let Some(after) = rest.strip_prefix(b",") {
                rest = after.trim_ascii_start();
            }
            if rest.is_empty() {
                break;
            }
            let Some((tag, after)) = EntityTag::next(rest) else {
                break;
            };
            let equal = if strong {
                tag.strong_eq(current)
            } else {
                tag.weak_eq(current)
            };
            if equal {
                return true;
            }
            rest = after;
        }
    }
    false
}

/// An HTTP-date; an invalid one is none (its condition is then ignored).
pub(super) fn date(value: Option<&HeaderValue>) -> Option<SystemTime> {
    httpdate::parse_http_date(value?.to_str().ok()?.trim()).ok()
}

//! A caller's `Range` (RFC 9110 §14) against a `200` representation: one
//! byte range, or the whole representation, or `416`.

use super::validators::{date, EntityTag};
use http::header::{self, HeaderMap, HeaderValue};
use std::time::Duration;

/// What a caller's `Range` makes of a `200` representation of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ranged {
    /// No range, or one to ignore: the whole representation.
    Whole,
    /// Bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// `416`.
    Unsatisfiable,
}

/// RFC 9110 §13.2.2 step 5 and §14: the caller's single byte range of a
/// `200` representation of `len` bytes, if its `If-Range` (if any) holds.
/// Anything this layer does not serve as a range — another unit, several
/// ranges, bad syntax — is the whole representation, which a server may
/// always answer instead (§14.2).
pub(super) fn ranged(conditions: &HeaderMap, headers: &HeaderMap, len: u64) -> Ranged {
    let Some(range) = conditions.get(header::RANGE) else {
        return Ranged::Whole;
    };
    if conditions.get_all(header::RANGE).iter().count() > 1 {
        return Ranged::Whole;
    }
    if let Some(if_range) = conditions.get(header::IF_RANGE) {
        if !if_range_holds(if_range, headers) {
            return Ranged::Whole;
        }
    }
    parse_range(range.as_bytes(), len)
}

/// §13.1.5: an entity tag matches by strong comparison; a date matches a
/// strong `Last-Modified` (one at least a second before the answer's
/// `Date`, §8.8.2.2) exactly.
fn if_range_holds(if_range: &HeaderValue, headers: &HeaderMap) -> bool {
    let value = if_range.as_bytes();
    if value.starts_with(b"\"") || value.starts_with(b"W/") {
        let current = headers
            .get(header::ETAG)
            .and_then(|v| EntityTag::parse(v.as_bytes()));
        return match (EntityTag::parse(value), current) {
            (Some(asked), Some(current)) => asked.strong_eq(&current),
            _ => false,
        };
    }
    let (Some(asked), Some(modified)) = (
        date(Some(if_range)),
        date(headers.get(header::LAST_MODIFIED)),
    ) else {
        return false;
    };
    let strong =
        date(headers.get(header::DATE)).is_some_and(|at| at >= modified + Duration::from_secs(1));
    strong && asked == modified
}

/// A `Range` value of one byte range, against a representation of `len`.
pub(super) fn parse_range(value: &[u8], len: u64) -> Ranged {
    let Ok(value) = std::str::from_utf8(value) else {
        return Ranged::Whole;
    };
    let Some((unit, set)) = value.split_once('=') else {
        return Ranged::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Ranged::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // More digits than fit are a number past any length.
        Some(s.parse().unwrap_or(u64::MAX))
    };
    if first.is_empty() {
        // A suffix: the last `n` bytes.
        let Some(n) = number(last) else {
            return Ranged::Whole;
        };
        if n == 0 || len == 0 {
            return Ranged::Unsatisfiable;
        }
        return Ranged::Part {
            start: len - n.min(len),
            end: len - 1,
        };
    }
    let Some(start) = number(first) else {
        return Ranged::Whole;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match number(last) {
            Some(end) if end >= start => end,
            // `last < first` is invalid syntax: ignored.
            _ => return Ranged::Whole,
        }
    };
    if start >= len {
        return Ranged::Unsatisfiable;
    }
    Ranged::Part {
        start,
        end: end.min(len - 1),
    }
}

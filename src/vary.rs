//! Variants (RFC 9111 §4.1): the answers of one resource that differ by the
//! request headers their `Vary` names, each stored under a key of its own.
//!
//! A request's key (what the extractor keys) names the *primary* key; once
//! the resource's answers are known to vary, the backend keeps an index
//! under the primary key naming the headers they vary on ([`Variants`]),
//! and each answer is stored under the primary key plus the request's
//! values of those headers, normalised (its *selection*): a lookup then
//! finds the answer whose values match the request's, and only that one.
//!
//! Beside the names in `Vary`, an answer with a `Content-Encoding` other
//! than `identity` varies on `Accept-Encoding`, and one with a
//! `Content-Language` on `Accept-Language`, whatever its `Vary` says:
//! origins often compress or translate without saying so, and a cache that
//! stopped keying those headers must not hand a `gzip` body to a client
//! that cannot read it. Headers the extractor keys are left out: they are
//! in the primary key already.

use crate::Entry;
use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName};
use std::sync::Arc;

/// What a backend holds under a key: an answer, or — under a primary key
/// whose answers vary — the index naming the headers they vary on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Found {
    /// The stored answer.
    Entry(Entry),
    /// The resource's answers vary on these request headers: look up the
    /// [selected](crate::Key::selected) key of the request's values.
    Variants(Variants),
}

impl Found {
    /// The answer, if this is one.
    pub fn into_entry(self) -> Option<Entry> {
        match self {
            Found::Entry(entry) => Some(entry),
            Found::Variants(_) => None,
        }
    }
}

/// The request headers a resource's answers vary on: field names,
/// lowercase, sorted, each once. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Variants(Arc<[HeaderName]>);

impl Variants {
    /// Variants on these names (in any order, repeated or not); `None` if
    /// there are none.
    pub fn new(names: impl IntoIterator<Item = HeaderName>) -> Option<Self> {
        let mut names: Vec<HeaderName> = names.into_iter().collect();
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        (!names.is_empty()).then(|| Variants(names.into()))
    }

    /// The names, sorted.
    pub fn names(&self) -> &[HeaderName] {
        &self.0
    }

    /// The names as one field value (`accept-encoding, x-tenant`): how
    /// `RedisBackend` stores them.
    pub fn to_field(&self) -> String {
        self.names()
            .iter()
            .map(HeaderName::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Reads what [`to_field`](Self::to_field) wrote; `None` if it is not
    /// a list of field names.
    pub fn from_field(field: &[u8]) -> Option<Self> {
        let names = std::str::from_utf8(field)
            .ok()?
            .split(',')
            .map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect::<Option<Vec<_>>>()?;
        Self::new(names)
    }

    /// The selection of a request with `headers`: for each name, framed,
    /// the name and the request's value of it, normalised (see
    /// [`normalised`]), or a mark that the request has none. Two requests
    /// get equal selections exactly when their normalised values are equal.
    pub(crate) fn selection(&self, headers: &HeaderMap) -> Bytes {
        let mut buf = BytesMut::new();
        for name in self.names() {
            put_framed(&mut buf, name.as_str().as_bytes());
            match normalised(name, headers) {
                Some(value) => {
                    buf.put_u8(1);
                    put_framed(&mut buf, &value);
                }
                None => buf.put_u8(0),
            }
        }
        buf.freeze()
    }
}

fn put_framed(buf: &mut BytesMut, part: &[u8]) {
    buf.put_u32(u32::try_from(part.len()).unwrap_or(u32::MAX));
    buf.put_slice(part);
}

/// A request's value of `name` as RFC 9111 §4.1 allows a cache to compare
/// it: its field lines combined with commas, the whitespace around the
/// commas and at either end gone, empty list members dropped (outside
/// quoted strings, which are kept byte for byte); `Accept-Encoding` also in
/// lowercase (content codings are case-insensitive, RFC 9110 §8.4.1).
/// `None` if the request has no such field.
pub(crate) fn normalised(name: &HeaderName, headers: &HeaderMap) -> Option<Vec<u8>> {
    let mut lines = headers.get_all(name).iter().peekable();
    lines.peek()?;
    let lowercase = name == header::ACCEPT_ENCODING;
    let mut out = Vec::new();
    for line in lines {
        let mut quoted = false;
        let mut escaped = false;
        // A member starts: a comma is due before anything else is written.
        let mut member_start = true;
        for &byte in line.as_bytes() {
            if quoted {
                out.push(byte);
                if escaped {
                    escaped = false;
                } else if byte == b'\\' {
                    escaped = true;
                } else if byte == b'"' {
                    quoted = false;
                }
                continue;
            }
            match byte {
                b',' => {
                    trim_end(&mut out);
                    member_start = true;
                }
                b' ' | b'\t' if member_start => {}
                _ => {
                    if member_start {
                        if !out.is_empty() {
                            out.push(b',');
                        }
                        member_start = false;
                    }
                    if byte == b'"' {
                        quoted = true;
                    }
                    out.push(if lowercase {
                        byte.to_ascii_lowercase()
                    } else {
                        byte
                    });
                }
            }
        }
        if !quoted {
            trim_end(&mut out);
        }
    }
    Some(out)
}

fn trim_end(out: &mut Vec<u8>) {
    while out.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
        out.pop();
    }
}

/// Rewrites `Accept-Encoding` to `br`, `gzip` or nothing, the first of them
/// the request accepts (see `CoalesceConfig::normalize_accept_encoding`).
pub(crate) fn normalize_accept_encoding(headers: &mut HeaderMap) {
    let Some(value) = normalised(&header::ACCEPT_ENCODING, headers) else {
        return;
    };
    let accepted = |coding: &str| {
        value.split(|b| *b == b',').any(|member| {
            let mut parts = member.split(|b| *b == b';');
            let name = parts.next().unwrap_or_default();
            name.trim_ascii() == coding.as_bytes()
                && parts.all(|param| {
                    let param = param.trim_ascii();
                    let Some(q) = param
                        .strip_prefix(b"q=")
                        .or_else(|| param.strip_prefix(b"Q="))
                    else {
                        return true;
                    };
                    // q=0, q=0., q=0.000: not accepted.
                    !q.iter().all(|b| matches!(b, b'0' | b'.'))
                })
        })
    };
    let chosen = if accepted("br") {
        Some("br")
    } else if accepted("gzip") {
        Some("gzip")
    } else {
        None
    };
    headers.remove(header::ACCEPT_ENCODING);
    if let Some(coding) = chosen {
        headers.insert(
            header::ACCEPT_ENCODING,
            http::HeaderValue::from_static(coding),
        );
    }
}

/// The request headers an answer with `headers` varies on, outside those
/// the extractor keys (`keyed`): its `Vary`, and `Accept-Encoding` /
/// `Accept-Language` for a `Content-Encoding` other than `identity` / a
/// `Content-Language`. `None` if it varies on nothing outside the key.
/// (`Vary: *` makes an answer private before this is asked.)
pub(crate) fn of_answer(
    headers: &HeaderMap,
    keyed: impl Fn(&HeaderName) -> bool,
) -> Option<Variants> {
    let encoded = headers.get_all(header::CONTENT_ENCODING).iter().any(|v| {
        v.to_str().map_or(true, |v| {
            v.split(',')
                .map(str::trim)
                .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        })
    });
    let translated = headers.contains_key(header::CONTENT_LANGUAGE);
    let implied = [
        encoded.then_some(header::ACCEPT_ENCODING),
        translated.then_some(header::ACCEPT_LANGUAGE),
    ];
    let names = crate::policy::varied_on(headers)
        .chain(implied.into_iter().flatten())
        .filter(|name| !keyed(name));
    Variants::new(names)
}

/// A flight whose answer is for some of its callers only: those whose
/// requests select the same variant as the one it was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Varied {
    variants: Variants,
    /// The selection the answer was made for.
    selection: Bytes,
}

impl Varied {
    /// The variant of `variants` that a request with `headers` selects.
    pub(crate) fn of(variants: Variants, headers: &HeaderMap) -> Self {
        let selection = variants.selection(headers);
        Varied {
            variants,
            selection,
        }
    }

    /// Whether a request with these headers selects this variant.
    pub(crate) fn matches(&self, headers: &HeaderMap) -> bool {
        self.variants.selection(headers) == self.selection
    }

    /// The headers the variant is selected by.
    pub(crate) fn variants(&self) -> &Variants {
        &self.variants
    }

    /// The key this variant of `key`'s resource is stored under.
    pub(crate) fn key(&self, key: &crate::Key) -> crate::Key {
        key.selected(self.variants.clone(), &self.selection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn norm(name: &'static str, lines: &[(&'static str, &'static str)]) -> Option<String> {
        normalised(&HeaderName::from_static(name), &headers(lines))
            .map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn values_are_compared_as_the_rfc_allows() {
        let ae = "accept-encoding";
        assert_eq!(norm(ae, &[(ae, "gzip, br")]).unwrap(), "gzip,br");
        assert_eq!(norm(ae, &[(ae, " GZIP ,br ")]).unwrap(), "gzip,br");
        // Field lines combine; empty members go.
        assert_eq!(norm(ae, &[(ae, "gzip"), (ae, "br")]).unwrap(), "gzip,br");
        assert_eq!(norm(ae, &[(ae, "gzip,, ,br")]).unwrap(), "gzip,br");
        // Order is meaning (preference ties): kept.
        assert_ne!(norm(ae, &[(ae, "br, gzip")]), norm(ae, &[(ae, "gzip, br")]));
        // Case is kept outside Accept-Encoding.
        assert_eq!(
            norm("accept-language", &[("accept-language", "en-GB, fr")]).unwrap(),
            "en-GB,fr"
        );
        // Quoted strings are kept byte for byte.
        assert_eq!(
            norm("x-q", &[("x-q", "a=\"x, y\" , b")]).unwrap(),
            "a=\"x, y\",b"
        );
        assert_eq!(
            norm("x-q", &[("x-q", "a=\"x\\\", y\"")]).unwrap(),
            "a=\"x\\\", y\""
        );
        // Absent is not empty.
        assert_eq!(norm(ae, &[]), None);
        assert_eq!(norm(ae, &[(ae, "")]).unwrap(), "");
    }

    #[test]
    fn selections_differ_exactly_when_normalised_values_do() {
        let v = Variants::new([header::ACCEPT_ENCODING, header::ACCEPT_LANGUAGE]).unwrap();
        let a = v.selection(&headers(&[("accept-encoding", "gzip, br")]));
        let b = v.selection(&headers(&[("accept-encoding", "gzip,br")]));
        let c = v.selection(&headers(&[("accept-encoding", "gzip")]));
        let d = v.selection(&headers(&[("accept-encoding", "")]));
        let e = v.selection(&headers(&[]));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(d, e, "an empty value is not an absent one");
        // Framed: no value can pass for another header's.
        let f = v.selection(&headers(&[("accept-language", "gzip")]));
        assert_ne!(c, f);
    }

    #[test]
    fn answers_vary_on_their_vary_and_on_their_encoding_and_language() {
        let none = |_: &HeaderName| false;
        let names = |h: &HeaderMap| of_answer(h, none).map(|v| v.to_field());
        assert_eq!(names(&headers(&[])), None);
        assert_eq!(
            names(&headers(&[("vary", "X-Tenant, accept-encoding")])).unwrap(),
            "accept-encoding, x-tenant"
        );
        assert_eq!(
            names(&headers(&[("content-encoding", "gzip")])).unwrap(),
            "accept-encoding"
        );
        assert_eq!(names(&headers(&[("content-encoding", "identity")])), None);
        assert_eq!(
            names(&headers(&[("content-language", "fr")])).unwrap(),
            "accept-language"
        );
        // Keyed headers are in the key already.
        let keyed = |n: &HeaderName| n == header::ACCEPT_ENCODING;
        assert!(of_answer(&headers(&[("content-encoding", "br")]), keyed).is_none());
    }

    #[test]
    fn accept_encoding_normalises_to_three_values() {
        let norm = |lines: &[(&'static str, &'static str)]| {
            let mut map = headers(lines);
            normalize_accept_encoding(&mut map);
            map.get("accept-encoding")
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let ae = "accept-encoding";
        assert_eq!(norm(&[(ae, "gzip, deflate, br, zstd")]).unwrap(), "br");
        assert_eq!(norm(&[(ae, "gzip, deflate")]).unwrap(), "gzip");
        assert_eq!(norm(&[(ae, "GZIP")]).unwrap(), "gzip");
        assert_eq!(norm(&[(ae, "br;q=0, gzip;q=0.5")]).unwrap(), "gzip");
        assert_eq!(norm(&[(ae, "br;q=0.0")]), None);
        assert_eq!(norm(&[(ae, "br;q=0.01")]).unwrap(), "br");
        assert_eq!(norm(&[(ae, "identity")]), None);
        assert_eq!(norm(&[(ae, "deflate"), (ae, "gzip")]).unwrap(), "gzip");
        assert_eq!(norm(&[]), None);
    }

    #[test]
    fn names_survive_their_field_form() {
        let v = Variants::new([header::ACCEPT, header::ACCEPT_ENCODING, header::ACCEPT]).unwrap();
        assert_eq!(v.names().len(), 2);
        assert_eq!(Variants::from_field(v.to_field().as_bytes()), Some(v));
        assert_eq!(Variants::from_field(b"a b"), None);
        assert_eq!(Variants::from_field(b""), None);
    }
}

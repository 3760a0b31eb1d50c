//! Targeted cache control (RFC 9213): a field such as `CDN-Cache-Control`
//! that speaks to some caches only. When one of the configured fields is on
//! an answer with a valid, non-empty value, this cache takes its storage
//! and freshness decisions from it, and ignores `Cache-Control` and
//! `Expires` (RFC 9213 §2.1); fields other than these (`Set-Cookie`,
//! `Vary`, `Age`, `Date`) count as ever.
//!
//! The field is a Dictionary structured field (RFC 8941), parsed by `sfv`;
//! one that does not parse, or is empty, is ignored, as the RFC says. Its
//! members become the `Cache-Control` directives they mean: a member that
//! is `true` a bare directive (`private`), one that is `?0` none at all, an
//! integer, token or string its argument (`max-age=60`), an inner list the
//! names it lists (`no-cache=("set-cookie")`); parameters are ignored.

use http::{header, HeaderMap, HeaderName, HeaderValue};
use sfv::{BareItem, Dictionary, ListEntry, Parser};
use std::fmt::Write as _;

/// The targeted field among `names` (in their order of precedence) that
/// `headers` hold, as the `Cache-Control` field it stands for; `None` if
/// none is there with a valid, non-empty value.
pub(crate) fn cache_control(headers: &HeaderMap, names: &[HeaderName]) -> Option<HeaderMap> {
    names
        .iter()
        .find_map(|name| as_cache_control(headers, name))
}

fn as_cache_control(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderMap> {
    let mut lines = headers.get_all(name).iter().peekable();
    lines.peek()?;
    // Several field lines are one value, joined by commas (RFC 8941 §4.2).
    let mut joined = Vec::new();
    for (i, line) in lines.enumerate() {
        if i > 0 {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(line.as_bytes());
    }
    let dictionary: Dictionary = Parser::new(&joined).parse().ok()?;
    if dictionary.is_empty() {
        return None;
    }
    let mut directives = String::new();
    for (key, member) in &dictionary {
        let argument = match member {
            ListEntry::Item(item) => match &item.bare_item {
                BareItem::Boolean(false) => continue,
                BareItem::Boolean(true) => None,
                BareItem::Integer(n) => Some(n.to_string()),
                BareItem::Decimal(d) => Some(d.to_string()),
                BareItem::Token(t) => Some(t.as_str().to_owned()),
                BareItem::String(s) => Some(quoted(s.as_str())),
                // Nothing a cache directive takes.
                _ => return None,
            },
            ListEntry::InnerList(list) => {
                let mut names = Vec::new();
                for item in &list.items {
                    match &item.bare_item {
                        BareItem::Token(t) => names.push(t.as_str().to_owned()),
                        BareItem::String(s) => names.push(s.as_str().to_owned()),
                        _ => return None,
                    }
                }
                Some(quoted(&names.join(", ")))
            }
        };
        if !directives.is_empty() {
            directives.push_str(", ");
        }
        directives.push_str(key.as_str());
        if let Some(argument) = argument {
            let _ = write!(directives, "={argument}");
        }
    }
    let mut control = HeaderMap::new();
    // No directive left (every member `?0`): as good as empty.
    if directives.is_empty() {
        return None;
    }
    control.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&directives).ok()?,
    );
    Some(control)
}

/// `text` as a quoted-string.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(lines: &[&str]) -> Option<String> {
        let name = HeaderName::from_static("cdn-cache-control");
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(&name, line.parse().unwrap());
        }
        cache_control(&headers, &[name])
            .map(|h| h[header::CACHE_CONTROL].to_str().unwrap().to_owned())
    }

    #[test]
    fn members_become_the_directives_they_mean() {
        assert_eq!(control(&["max-age=60"]).as_deref(), Some("max-age=60"));
        assert_eq!(
            control(&["private, max-age=60", "stale-if-error=30"]).as_deref(),
            Some("private, max-age=60, stale-if-error=30")
        );
        assert_eq!(
            control(&["no-store=?0, max-age=5"]).as_deref(),
            Some("max-age=5")
        );
        assert_eq!(
            control(&["no-cache=(\"set-cookie\" x-a)"]).as_deref(),
            Some("no-cache=\"set-cookie, x-a\"")
        );
        assert_eq!(control(&["max-age=60;a=1"]).as_deref(), Some("max-age=60"));
    }

    #[test]
    fn an_invalid_or_empty_field_is_ignored() {
        for lines in [
            &[""][..],
            &["Max-Age=60"],
            &["max-age=60,"],
            &["max-age=:AAA=:"],
            &["private=?0"],
            &["max-age=60", "Private"],
        ] {
            assert_eq!(control(lines), None, "{lines:?}");
        }
        assert_eq!(control(&[]), None);
    }

    #[test]
    fn the_first_named_field_present_wins() {
        let own = HeaderName::from_static("coalesce-cache-control");
        let cdn = HeaderName::from_static("cdn-cache-control");
        let mut headers = HeaderMap::new();
        headers.insert(&cdn, "max-age=10".parse().unwrap());
        let names = [own.clone(), cdn.clone()];
        let got =
            |h: &HeaderMap| cache_control(h, &names).map(|c| c[header::CACHE_CONTROL].clone());
        assert_eq!(got(&headers).unwrap(), "max-age=10");
        headers.insert(&own, "max-age=20".parse().unwrap());
        assert_eq!(got(&headers).unwrap(), "max-age=20");
        // An invalid one gives way to the next.
        headers.insert(&own, "Max-Age=20".parse().unwrap());
        assert_eq!(got(&headers).unwrap(), "max-age=10");
    }
}

//! The canonical form of a JSON text: what two bodies that mean the same
//! share, and two that do not never share.
//!
//! Written over the raw bytes rather than with `serde_json`: keeping
//! numbers *as written* needs `serde_json`'s `arbitrary_precision`, a
//! feature that Cargo would unify into every other user of `serde_json` in
//! an application's build (changing how their `Number`s behave); and a
//! canonicaliser must refuse what parsers disagree on (duplicate object
//! keys), which `serde_json` silently resolves. This one never panics,
//! bounds its nesting, and allocates one output buffer (plus strings that
//! hold escapes).
//!
//! The canonical form: no insignificant whitespace; object members sorted
//! by their keys' UTF-8 bytes (after unescaping); strings unescaped, then
//! written with the shortest escapes (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`,
//! `\t`, `\u00xx` for other control characters, everything else as UTF-8);
//! numbers exactly as written (`1`, `1.0` and `1e0` stay three numbers: a
//! server may read them differently); `true`, `false`, `null`. It is JSON
//! itself, and a function of the value alone, so equal forms mean equal
//! values and the reverse.

use std::borrow::Cow;

/// How deep arrays and objects may nest; deeper texts are keyed by their
/// bytes (the recursion stays far from any stack limit).
const MAX_DEPTH: usize = 128;

/// A parsed JSON value; numbers keep their text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    Null,
    Bool(bool),
    Number(&'a str),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    /// Members sorted by key, no two with one key.
    Object(Vec<(Cow<'a, str>, Value<'a>)>),
}

#[cfg(feature = "graphql")]
impl<'a> Value<'a> {
    /// The member `name` of an object.
    pub(crate) fn get(&self, name: &str) -> Option<&Value<'a>> {
        match self {
            Value::Object(members) => members
                .binary_search_by(|(key, _)| key.as_ref().cmp(name))
                .ok()
                .map(|i| &members[i].1),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// The canonical form of the JSON `text`, or `None` if it is not one JSON
/// value (RFC 8259) in UTF-8, has an object with two members of one key
/// (parsers disagree on which wins), or nests deeper than 128.
///
/// The form: no insignificant whitespace; object members sorted by their
/// keys' UTF-8 bytes (after unescaping); strings unescaped, then written
/// with the shortest escapes (`\"`, `\\`, `\n` and the like, `\u00xx`
/// for other control characters, everything else as UTF-8); numbers
/// exactly as written (`1`, `1.0` and `1e0` stay three numbers: a server
/// may read them differently). It is JSON itself, and a function of the
/// value alone: two texts have one form exactly when they hold one value.
///
/// ```
/// use tower_coalesce::body_keys::canonical_json;
///
/// let form = canonical_json(br#" { "b": [1.0, "\u0041"], "a": null } "#);
/// assert_eq!(form.as_deref(), Some(&br#"{"a":null,"b":[1.0,"A"]}"#[..]));
/// assert_eq!(canonical_json(br#"{"a":1,"a":2}"#), None);
/// ```
pub fn canonical_json(text: &[u8]) -> Option<Vec<u8>> {
    let value = parse(text)?;
    let mut out = Vec::with_capacity(text.len());
    write(&value, &mut out);
    Some(out)
}

/// Parses one JSON value (RFC 8259), with whitespace around it; `None` as
/// for [`canonical_json`].
pub(crate) fn parse(text: &[u8]) -> Option<Value<'_>> {
    let text = std::str::from_utf8(text).ok()?;
    let mut parser = Parser { text, at: 0 };
    let value = parser.value(0)?;
    parser.skip_whitespace();
    (parser.at == text.len()).then_some(value)
}

/// Writes `value` in canonical form.
pub(crate) fn write(value: &Value<'_>, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(n.as_bytes()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        Value::Object(members) => {
            out.push(b'{');
            for (i, (key, item)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write(item, out);
            }
            out.push(b'}');
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, literal: &str) -> Option<()> {
        let rest = self.text.get(self.at..)?;
        rest.starts_with(literal).then(|| self.at += literal.len())
    }

    fn value(&mut self, depth: usize) -> Option<Value<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.skip_whitespace();
        match self.peek()? {
            b'n' => self.eat("null").map(|()| Value::Null),
            b't' => self.eat("true").map(|()| Value::Bool(true)),
            b'f' => self.eat("false").map(|()| Value::Bool(false)),
            b'"' => self.string().map(Value::String),
            b'[' => self.array(depth),
            b'{' => self.object(depth),
            b'-' | b'0'..=b'9' => self.number().map(Value::Number),
            _ => None,
        }
    }

    fn array(&mut self, depth: usize) -> Option<Value<'a>> {
        self.at += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Some(Value::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_whitespace();
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(Value::Array(items));
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self, depth: usize) -> Option<Value<'a>> {
        self.at += 1;
        let mut members = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Some(Value::Object(members));
        }
        loop {
            self.skip_whitespace();
            if self.peek()? != b'"' {
                return None;
            }
            let key = self.string()?;
            self.skip_whitespace();
            self.eat(":")?;
            let value = self.value(depth + 1)?;
            members.push((key, value));
            self.skip_whitespace();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    break;
                }
                _ => return None,
            }
        }
        // Stable: among equal keys the order does not matter, as any makes
        // the text refused.
        members.sort_by(|(a, _), (b, _)| a.as_bytes().cmp(b.as_bytes()));
        if members.windows(2).any(|pair| pair[0].0 == pair[1].0) {
            // Parsers disagree on which value wins.
            return None;
        }
        Some(Value::Object(members))
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, as written.
    fn number(&mut self) -> Option<&'a str> {
        let start = self.at;
        let bytes = self.text.as_bytes();
        let digits = |at: &mut usize| {
            let from = *at;
            while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            *at > from
        };
        let mut at = self.at;
        if bytes.get(at) == Some(&b'-') {
            at += 1;
        }
        match bytes.get(at)? {
            b'0' => at += 1,
            b'1'..=b'9' => {
                digits(&mut at);
            }
            _ => return None,
        }
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            if !digits(&mut at) {
                return None;
            }
        }
        if matches!(bytes.get(at), Some(b'e' | b'E')) {
            at += 1;
            if matches!(bytes.get(at), Some(b'+' | b'-')) {
                at += 1;
            }
            if !digits(&mut at) {
                return None;
            }
        }
        self.at = at;
        self.text.get(start..at)
    }

    /// A string, unescaped; borrowed when it holds no escape.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.at += 1;
        let bytes = self.text.as_bytes();
        let start = self.at;
        // The common case: no escape, so the text itself.
        loop {
            match *bytes.get(self.at)? {
                b'"' => {
                    let s = self.text.get(start..self.at)?;
                    self.at += 1;
                    return Some(Cow::Borrowed(s));
                }
                b'\\' => break,
                0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        let mut out = String::from(self.text.get(start..self.at)?);
        loop {
            match *bytes.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(Cow::Owned(out));
                }
                b'\\' => {
                    self.at += 1;
                    let escaped = *bytes.get(self.at)?;
                    self.at += 1;
                    let c = match escaped {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return None,
                    };
                    out.push(c);
                }
                0..=0x1f => return None,
                _ => {
                    // One whole UTF-8 character (the text is valid UTF-8).
                    let c = self.text.get(self.at..)?.chars().next()?;
                    out.push(c);
                    self.at += c.len_utf8();
                }
            }
        }
    }

    /// The character of `\uXXXX` (the `\u` read), or of a surrogate pair
    /// `\uD8xx\uDCxx`; a lone surrogate is no character.
    fn unicode_escape(&mut self) -> Option<char> {
        let high = self.hex4()?;
        if !(0xd800..0xdc00).contains(&high) {
            return char::from_u32(high);
        }
        self.eat("\\u")?;
        let low = self.hex4()?;
        if !(0xdc00..0xe000).contains(&low) {
            return None;
        }
        char::from_u32(0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00))
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.text.get(self.at..self.at.checked_add(4)?)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.at += 4;
        u32::from_str_radix(digits, 16).ok()
    }
}

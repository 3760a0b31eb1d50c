//! The JSON canonicaliser: what it keeps, what it refuses, and (by
//! property) that equal forms mean equal values and the reverse.

use super::json::canonical_json;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn canon(text: &str) -> Option<String> {
    canonical_json(text.as_bytes()).map(|c| String::from_utf8(c).unwrap())
}

#[test]
fn whitespace_goes_and_members_are_sorted() {
    assert_eq!(
        canon(" { \"b\" : [ 1 , {\"d\":null, \"c\":true} ] ,\n\t\"a\":\"x\" } ").as_deref(),
        Some(r#"{"a":"x","b":[1,{"c":true,"d":null}]}"#)
    );
}

#[test]
fn numbers_stay_as_written() {
    assert_eq!(
        canon("[1, 1.0, 1e0, -0, 10E+2, 123456789012345678901234567890]").as_deref(),
        Some("[1,1.0,1e0,-0,10E+2,123456789012345678901234567890]")
    );
    assert_ne!(canon("1"), canon("1.0"));
}

#[test]
fn escapes_are_unescaped_then_written_the_short_way() {
    assert_eq!(
        canon(r#""\u0041\/\u00e9\ud83d\ude00\n\u001f""#).as_deref(),
        Some("\"A/é😀\\n\\u001f\"")
    );
    assert_eq!(canon(r#"{"\u0061":1}"#), canon(r#"{"a":1}"#));
}

#[test]
fn a_duplicate_key_is_refused_even_when_escaped_differently() {
    assert_eq!(canon(r#"{"a":1,"a":1}"#), None);
    assert_eq!(canon(r#"{"a":1,"\u0061":2}"#), None);
    assert_eq!(
        canon(r#"[{"a":1},{"a":1}]"#).as_deref(),
        Some(r#"[{"a":1},{"a":1}]"#)
    );
}

#[test]
fn invalid_texts_are_refused() {
    for bad in [
        "",
        " ",
        "{",
        "[1,]",
        "{\"a\":1,}",
        "01",
        "1.",
        ".5",
        "-",
        "1e",
        "+1",
        "tru",
        "nul",
        "\"\\x\"",
        "\"\u{1}\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "NaN",
        "[1] [2]",
        "{a:1}",
        "'a'",
        "\u{feff}{}",
    ] {
        assert_eq!(canon(bad), None, "{bad:?}");
    }
    assert_eq!(canonical_json(b"\"\xff\""), None);
}

#[test]
fn nesting_is_bounded() {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    assert!(canon(&deep(100)).is_some());
    assert_eq!(canon(&deep(100_000)), None);
}

/// A JSON value as the tests model it: numbers by their text, objects as
/// maps (so two models are equal exactly when the values are).
#[derive(Debug, Clone, PartialEq)]
enum Model {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Model>),
    Object(BTreeMap<String, Model>),
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c]{0,2}",
        proptest::collection::vec(any::<char>(), 0..6).prop_map(|c| c.into_iter().collect()),
    ]
}

fn model() -> impl Strategy<Value = Model> {
    let leaf = prop_oneof![
        Just(Model::Null),
        any::<bool>().prop_map(Model::Bool),
        "-?(0|[1-9][0-9]{0,4})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,2})?".prop_map(Model::Number),
        text().prop_map(Model::String),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Model::Array),
            proptest::collection::btree_map(text(), inner, 0..5).prop_map(Model::Object),
        ]
    })
}

/// Writes `model` as JSON, with whitespace, member order and escapes
/// chosen by `noise`.
fn render(model: &Model, noise: &mut impl Iterator<Item = u8>, out: &mut String) {
    let mut pick = |n: u8| noise.next().unwrap_or(0) % n;
    let space = ["", " ", "\n", "\t ", "\r\n  "];
    out.push_str(space[usize::from(pick(5))]);
    match model {
        Model::Null => out.push_str("null"),
        Model::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Model::Number(n) => out.push_str(n),
        Model::String(s) => render_string(s, noise, out),
        Model::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render(item, noise, out);
            }
            out.push(']');
        }
        Model::Object(members) => {
            let mut members: Vec<_> = members.iter().collect();
            let turn = usize::from(noise.next().unwrap_or(0));
            if !members.is_empty() {
                let len = members.len();
                members.rotate_left(turn % len);
            }
            if turn % 2 == 1 {
                members.reverse();
            }
            out.push('{');
            for (i, (key, value)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render_string(key, noise, out);
                out.push_str(space[usize::from(noise.next().unwrap_or(0) % 5)]);
                out.push(':');
                render(value, noise, out);
            }
            out.push('}');
        }
    }
    out.push_str(space[usize::from(noise.next().unwrap_or(0) % 5)]);
}

fn render_string(s: &str, noise: &mut impl Iterator<Item = u8>, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let escape = noise.next().unwrap_or(0).is_multiple_of(3);
        match c {
            '"' | '\\' if !escape => {
                out.push('\\');
                out.push(c);
            }
            c if c < ' ' || escape => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    if noise.next().unwrap_or(0).is_multiple_of(2) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    } else {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
            }
            '/' if noise.next().unwrap_or(0).is_multiple_of(2) => out.push_str("\\/"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn rendered(model: &Model, noise: &[u8]) -> String {
    let mut out = String::new();
    render(model, &mut noise.iter().copied().cycle(), &mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn two_writings_of_one_value_have_one_form(
        model in model(),
        a in proptest::collection::vec(any::<u8>(), 1..64),
        b in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let (one, two) = (rendered(&model, &a), rendered(&model, &b));
        let form = canon(&one);
        prop_assert!(form.is_some(), "refused {one:?}");
        prop_assert_eq!(&form, &canon(&two), "{} / {}", one, two);
        // The form is itself canonical.
        prop_assert_eq!(canon(form.as_deref().unwrap()), form);
    }

    #[test]
    fn different_values_never_share_a_form(
        x in model(),
        y in model(),
        a in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        prop_assume!(x != y);
        prop_assert_ne!(canon(&rendered(&x, &a)), canon(&rendered(&y, &a)));
    }

    #[test]
    fn any_bytes_give_a_form_or_none_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = canonical_json(&bytes);
    }

    #[test]
    fn damaged_json_gives_a_form_or_none_without_panicking(
        model in model(),
        at in any::<usize>(),
        byte in any::<u8>(),
    ) {
        let mut text = rendered(&model, &[7]).into_bytes();
        if !text.is_empty() {
            let i = at % text.len();
            text[i] = byte;
            text.truncate(text.len().saturating_sub(at % 3));
        }
        let _ = canonical_json(&text);
    }
}

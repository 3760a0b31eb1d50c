//! Which GraphQL requests [`BodyKeys`] keys, and which share a key.

use super::tests::{post, read};
use super::*;
use crate::{Key, KeyExtractor};
use http::Request;
use http_body_util::Full;

fn keys() -> BodyKeys {
    BodyKeys::new(HttpKey::new()).route(Route::graphql("/graphql").persisted_queries(["ABC123"]))
}

fn ask(body: &str) -> Option<Key> {
    keys().extract(&read(post("/graphql", body), body))
}

fn get(query: &str) -> Option<Key> {
    let req = Request::get(format!("/graphql?{query}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    keys().extract(&req)
}

const Q: &str = r#"{"query":"query P($id: ID!) { product(id: $id) { id name } }","variables":{"id":"7","locale":"en"}}"#;

#[test]
fn whitespace_comments_commas_and_variable_order_share_a_key() {
    let a = ask(Q);
    assert!(a.is_some());
    let b = ask(
        "{\"variables\":{\"locale\":\"en\",\"id\":\"7\"},\"operationName\":null,\n\"query\":\"# the product\\nquery P($id: ID!) {\\n  product(id: $id) {\\n    id,\\n    name\\n  }\\n}\\n\"}",
    );
    assert_eq!(a, b);
    // Naming the document's only operation selects what it runs anyway.
    let named = Q.replace("{\"query\"", "{\"operationName\":\"P\",\"query\"");
    assert_ne!(named, Q);
    assert_eq!(a, ask(&named));
    // Another operation beside it, unselected, changes nothing either.
    let beside = Q.replace("} }\"", "} } query Q { other }\"");
    assert_ne!(beside, Q);
    assert_eq!(
        a,
        ask(&beside.replace("{\"query\"", "{\"operationName\":\"P\",\"query\""))
    );
}

#[test]
fn different_variables_operations_and_fields_never_share() {
    let a = ask(Q);
    assert_ne!(a, ask(&Q.replace("\"7\"", "\"8\"")));
    assert_ne!(a, ask(&Q.replace("id name", "name id")));
    let two = r#"query A { a } query B { b }"#;
    let op = |name: &str| ask(&format!(r#"{{"query":"{two}","operationName":"{name}"}}"#));
    assert!(op("A").is_some());
    assert_ne!(op("A"), op("B"));
    assert_eq!(op("C"), None);
    assert_eq!(ask(&format!(r#"{{"query":"{two}"}}"#)), None);
}

#[test]
fn mutations_subscriptions_and_rejected_documents_bypass() {
    assert_eq!(
        ask(r#"{"query":"mutation { rename(id: 7) { id } }"}"#),
        None
    );
    assert_eq!(ask(r#"{"query":"subscription { ticks }"}"#), None);
    let mixed = r#"{"query":"query A { a } mutation B { b }","operationName":"B"}"#;
    assert_eq!(ask(mixed), None);
    assert!(ask(&mixed.replace("\"B\"}", "\"A\"}")).is_some());
    // A mutation in a comment or a string is not one.
    assert!(ask(r##"{"query":"# mutation\n{ search(q: \"mutation { x }\") }"}"##).is_some());
    // What the parser rejects might be a mutation to a laxer one.
    assert_eq!(ask(r#"{"query":"mutation { rename(id: 7) "}"#), None);
    assert_eq!(ask(r#"{"query":"type Q { a: Int } { a }"}"#), None);
    // JSON the parsers may read otherwise.
    assert_eq!(ask(r#"{"query":"{ a }","query":"mutation { b }"}"#), None);
    assert_eq!(ask(r#"{"query":"{ a }""#), None);
}

#[test]
fn a_document_read_from_the_cache_keys_as_one_parsed_again() {
    let cached = keys();
    let parsed = BodyKeys::new(HttpKey::new()).route(
        Route::graphql("/graphql")
            .persisted_queries(["ABC123"])
            .document_cache(0),
    );
    let bodies = [
        Q.to_owned(),
        Q.replace("\"7\"", "\"8\""),
        r#"{"query":"query A { a } query B { b }","operationName":"A"}"#.to_owned(),
        r#"{"query":"query A { a } query B { b }","operationName":"B"}"#.to_owned(),
        r#"{"query":"query A { a } mutation B { b }","operationName":"B"}"#.to_owned(),
        r#"{"query":"{ a "}"#.to_owned(),
    ];
    for _ in 0..3 {
        for body in &bodies {
            let of = |keys: &BodyKeys| keys.extract(&read(post("/graphql", body), body));
            assert_eq!(of(&cached), of(&parsed), "{body}");
        }
    }
    assert_ne!(ask(&bodies[2]), ask(&bodies[3]));
    assert_eq!(ask(&bodies[4]), None);
}

/// A JSON body holding `document` as its query.
fn with_document(document: &str) -> String {
    let mut body = br#"{"query":"#.to_vec();
    let mut escaped = Vec::new();
    for c in document.chars() {
        match c {
            '"' => escaped.extend_from_slice(b"\\\""),
            '\\' => escaped.extend_from_slice(b"\\\\"),
            '\n' => escaped.extend_from_slice(b"\\n"),
            '\t' => escaped.extend_from_slice(b"\\t"),
            c if c < ' ' => escaped.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => escaped.extend_from_slice(c.to_string().as_bytes()),
        }
    }
    body.push(b'"');
    body.extend_from_slice(&escaped);
    body.extend_from_slice(br#"","variables":{"id":"7"}}"#);
    String::from_utf8(body).unwrap()
}

const TOKENS: [&str; 24] = [
    "query",
    "P",
    "(",
    "$id",
    ":",
    "ID",
    "!",
    ")",
    "{",
    "product",
    "(",
    "id",
    ":",
    "$id",
    ")",
    "{",
    "...",
    "Card",
    "}",
    "}",
    "fragment",
    "Card",
    "on",
    "Product { id name }",
];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    #[test]
    fn ignored_tokens_between_a_documents_tokens_change_nothing(
        gaps in proptest::collection::vec(0usize..5, TOKENS.len()),
    ) {
        const GAPS: [&str; 5] = [" ", "\n  ", ",", " # a comment, { mutation }\n", "\t,\r\n"];
        let mut document = String::new();
        for (token, gap) in TOKENS.iter().zip(&gaps) {
            document.push_str(token);
            document.push_str(GAPS[*gap]);
        }
        let plain = ask(&with_document(&TOKENS.join(" ")));
        proptest::prop_assert!(plain.is_some());
        let key = ask(&with_document(&document));
        // `apollo-parser` 0.8 rejects a comma right after a spread's
        // `...`: such a request bypasses, the safe outcome. Never
        // another key.
        let spread = TOKENS.iter().position(|t| *t == "...").unwrap();
        if GAPS[gaps[spread]].contains(',') {
            proptest::prop_assert!(key.is_none() || key == plain);
        } else {
            proptest::prop_assert_eq!(key, plain);
        }
    }

    #[test]
    fn any_document_gives_a_key_or_a_bypass_without_panicking(document in "\\PC{0,80}") {
        let _ = ask(&with_document(&document));
    }

    #[test]
    fn a_damaged_document_gives_a_key_or_a_bypass_without_panicking(
        at in 0usize..200,
        with in proptest::prelude::any::<char>(),
    ) {
        let mut document: Vec<char> = TOKENS.join(" ").chars().collect();
        let i = at % document.len();
        document[i] = with;
        let _ = ask(&with_document(&document.into_iter().collect::<String>()));
    }
}

#[test]
fn persisted_queries_by_hash_alone_coalesce_only_when_allowed() {
    let by_hash = |hash: &str| {
        ask(&format!(
            r#"{{"extensions":{{"persistedQuery":{{"version":1,"sha256Hash":"{hash}"}}}},"variables":{{"id":1}}}}"#
        ))
    };
    assert!(by_hash("abc123").is_some());
    assert_ne!(by_hash("abc123"), by_hash("ABC123x"));
    assert_eq!(by_hash("def456"), None);
}

#[test]
fn queries_over_get_are_keyed_the_same_way() {
    let a = get("query=%7B%20product(id%3A%201)%20%7B%20id%20%7D%20%7D&variables=%7B%22a%22%3A1%2C%22b%22%3A2%7D");
    assert!(a.is_some());
    let b =
        get("variables=%7B%22b%22%3A2%2C%20%22a%22%3A1%7D&query=%7Bproduct(id%3A1)%7Bid%7D%7D%0A");
    assert_eq!(a, b);
    let other = get("query=%7B%20product(id%3A%202)%20%7B%20id%20%7D%20%7D&variables=%7B%22a%22%3A1%2C%22b%22%3A2%7D");
    assert_ne!(a, other);
    // Other parameters stay in the key.
    let c =
        get("v=1&query=%7Bproduct(id%3A1)%7Bid%7D%7D&variables=%7B%22a%22%3A1%2C%22b%22%3A2%7D");
    assert!(c.is_some());
    assert_ne!(a, c);
    assert_eq!(get("query=mutation%7Bx%7D"), None);
    assert_eq!(get("query=%7Ba%7D&query=%7Bb%7D"), None);
    assert_eq!(get("query=%7Ba%7D&variables=%7Bbad"), None);
    // No GraphQL parameter: a page keyed by URL.
    let page = Request::get("/graphql?tab=2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(keys().extract(&page), HttpKey::new().extract(&page));
}

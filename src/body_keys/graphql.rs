//! The canonical form of a GraphQL request: the selected operation,
//! normalised, beside canonical `variables` and `extensions`; `None` for
//! every request that must bypass (a mutation, a subscription, a document
//! the parser rejects, an unknown persisted query).
//!
//! Parsed with `apollo-parser`: maintained with Apollo's router, spec
//! compliant, with recursion and token limits, and lossless, so the
//! normalised document is the parsed tokens themselves, joined by single
//! spaces, without whitespace, comments and commas (insignificant in
//! GraphQL). Field order, aliases, arguments and directives stay as
//! written: they shape the answer.

use super::json::{self, Value};
use apollo_parser::cst::{CstNode, Definition};
use apollo_parser::{Parser, SyntaxKind, SyntaxNode};
use std::borrow::Cow;
use std::collections::HashSet;

/// Nesting the parser follows before it gives up (the request bypasses).
const RECURSION_LIMIT: usize = 128;
/// Tokens the parser reads before it gives up (the request bypasses).
const TOKEN_LIMIT: usize = 30_000;

/// The canonical form of a GraphQL request in a JSON body.
pub(crate) fn canonical_body(body: &[u8], persisted: &HashSet<Box<str>>) -> Option<Vec<u8>> {
    canonical(json::parse(body)?, persisted)
}

/// The canonical form of a GraphQL request in a URL's query (a `GET`),
/// and the query's other parameters, as written and in order; `None` if
/// the query has no `query` and no persisted query hash (not a GraphQL
/// request, or not one to key).
pub(crate) fn canonical_query(
    query: &str,
    persisted: &HashSet<Box<str>>,
) -> Option<(Vec<u8>, String)> {
    // extensions, operationName, query, variables: the order of their
    // names, as an object's members are kept.
    const NAMES: [&str; 4] = ["extensions", "operationName", "query", "variables"];
    let mut fields: [Option<String>; 4] = Default::default();
    let mut rest = Vec::new();
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        let Some((name, value)) = url::form_urlencoded::parse(piece.as_bytes()).next() else {
            continue;
        };
        match NAMES.iter().position(|n| *n == name) {
            // A parameter given twice: servers disagree on which counts.
            Some(i) if fields[i].is_some() => return None,
            Some(i) => fields[i] = Some(value.into_owned()),
            None => rest.push(piece),
        }
    }
    let [extensions, operation, document, variables] = &fields;
    let mut members = Vec::with_capacity(4);
    if let Some(extensions) = extensions {
        members.push((
            Cow::Borrowed("extensions"),
            json::parse(extensions.as_bytes())?,
        ));
    }
    if let Some(operation) = operation {
        members.push((
            Cow::Borrowed("operationName"),
            Value::String(Cow::Borrowed(operation)),
        ));
    }
    if let Some(document) = document {
        members.push((
            Cow::Borrowed("query"),
            Value::String(Cow::Borrowed(document)),
        ));
    }
    if let Some(variables) = variables {
        members.push((
            Cow::Borrowed("variables"),
            json::parse(variables.as_bytes())?,
        ));
    }
    let canonical = canonical(Value::Object(members), persisted)?;
    Some((canonical, rest.join("&")))
}

/// The canonical form of the GraphQL request `request` (a JSON object).
fn canonical(request: Value<'_>, persisted: &HashSet<Box<str>>) -> Option<Vec<u8>> {
    let operation = match request.get("operationName") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name.as_ref()),
        Some(_) => return None,
    };
    let document = match request.get("query") {
        Some(Value::String(document)) => Some(normalised(document, operation)?),
        None | Some(Value::Null) => {
            let hash = request
                .get("extensions")
                .and_then(|e| e.get("persistedQuery"))
                .and_then(|p| p.get("sha256Hash"))
                .and_then(Value::as_str)?;
            if !persisted.contains(hash.to_ascii_lowercase().as_str()) {
                return None;
            }
            None
        }
        Some(_) => return None,
    };
    for name in ["variables", "extensions"] {
        if !matches!(
            request.get(name),
            None | Some(Value::Null | Value::Object(_))
        ) {
            return None;
        }
    }
    let Value::Object(members) = request else {
        return None;
    };
    // `null` and absent mean the same for these; the document replaced by
    // its normal form, which holds the selected operation alone (and so
    // its name: `operationName` would only tell apart requests that run
    // the same operation).
    let members = members
        .into_iter()
        .filter(|(name, value)| {
            let known = matches!(
                name.as_ref(),
                "query" | "operationName" | "variables" | "extensions"
            );
            let null = known && matches!(value, Value::Null);
            let redundant = document.is_some() && name == "operationName";
            !null && !redundant
        })
        .map(|(name, value)| match (name.as_ref(), &document) {
            ("query", Some(document)) => (name, Value::String(Cow::Borrowed(document.as_str()))),
            _ => (name, value),
        })
        .collect();
    let mut out = Vec::with_capacity(256);
    json::write(&Value::Object(members), &mut out);
    Some(out)
}

/// The operation `operation` names in `document` (or its only one), with
/// the document's fragments, as tokens joined by single spaces; `None` if
/// the document does not parse, holds other definitions, names no such
/// operation, or the operation is not a query.
fn normalised(document: &str, operation: Option<&str>) -> Option<String> {
    let tree = Parser::new(document)
        .recursion_limit(RECURSION_LIMIT)
        .token_limit(TOKEN_LIMIT)
        .parse();
    if tree.errors().next().is_some() {
        return None;
    }
    let mut operations = Vec::new();
    let mut fragments = Vec::new();
    for definition in tree.document().definitions() {
        match definition {
            Definition::OperationDefinition(op) => operations.push(op),
            Definition::FragmentDefinition(fragment) => fragments.push(fragment),
            // Type system definitions make the document one no server
            // executes.
            _ => return None,
        }
    }
    let selected = match operation {
        Some(name) => {
            let mut named = operations
                .iter()
                .filter(|op| op.name().is_some_and(|n| n.text() == name));
            let selected = named.next()?;
            if named.next().is_some() {
                return None;
            }
            selected
        }
        None if operations.len() == 1 => &operations[0],
        None => return None,
    };
    // The shorthand `{ ... }` is a query.
    let query = selected
        .operation_type()
        .is_none_or(|kind| kind.query_token().is_some());
    if !query {
        return None;
    }
    let mut out = String::with_capacity(document.len());
    print(selected.syntax(), &mut out);
    for fragment in &fragments {
        print(fragment.syntax(), &mut out);
    }
    Some(out)
}

/// Appends the significant tokens of `node`, each after a space.
fn print(node: &SyntaxNode, out: &mut String) {
    for token in node
        .descendants_with_tokens()
        .filter_map(|e| e.into_token())
    {
        if matches!(
            token.kind(),
            SyntaxKind::WHITESPACE | SyntaxKind::COMMENT | SyntaxKind::COMMA
        ) {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(token.text());
    }
}

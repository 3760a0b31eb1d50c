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
use std::sync::Arc;

/// Nesting the parser follows before it gives up (the request bypasses).
const RECURSION_LIMIT: usize = 128;
/// Tokens the parser reads before it gives up (the request bypasses).
const TOKEN_LIMIT: usize = 30_000;

/// The normal forms of the documents a route has read lately (or that they
/// bypass), by operation name and document: clients send a few documents
/// over and over with other variables, and parsing one is most of what a
/// key costs (tens of µs, against a few for the JSON around it). Keyed by
/// the whole text, never a digest of it, so two documents never share an
/// entry; bounded by bytes.
#[derive(Clone)]
pub(crate) struct Documents(Option<moka::sync::Cache<String, Option<Arc<str>>>>);

impl Documents {
    /// What one entry costs besides its texts (an estimate).
    const ENTRY_BYTES: usize = 96;

    /// A cache of at most `bytes` of texts (none for zero).
    pub(crate) fn new(bytes: u64) -> Self {
        Self((bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(bytes)
                .weigher(|key: &String, value: &Option<Arc<str>>| {
                    let len = key.len() + value.as_ref().map_or(0, |v| v.len()) + Self::ENTRY_BYTES;
                    u32::try_from(len).unwrap_or(u32::MAX)
                })
                .build()
        }))
    }

    /// The normal form of `document` with `operation` selected, from the
    /// cache or read now.
    fn normalised(&self, document: &str, operation: Option<&str>) -> Option<Arc<str>> {
        let Some(cache) = &self.0 else {
            return normalised(document, operation).map(Arc::from);
        };
        // The operation name, framed, then the document: no two pairs
        // spell one key.
        let mut key = String::with_capacity(document.len() + 24);
        match operation {
            Some(name) => {
                key.push_str(&name.len().to_string());
                key.push(':');
                key.push_str(name);
            }
            None => key.push('-'),
        }
        key.push_str(document);
        if let Some(known) = cache.get(&key) {
            return known;
        }
        let read = normalised(document, operation).map(Arc::from);
        cache.insert(key, read.clone());
        read
    }
}

impl std::fmt::Debug for Documents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.0.as_ref().map(|c| c.entry_count());
        f.debug_struct("Documents")
            .field("entries", &entries)
            .finish()
    }
}

/// The canonical form of a GraphQL request in a JSON body.
pub(crate) fn canonical_body(
    body: &[u8],
    persisted: &HashSet<Box<str>>,
    documents: &Documents,
) -> Option<Vec<u8>> {
    canonical(json::parse(body)?, persisted, documents)
}

/// The canonical form of a GraphQL request in a URL's query (a `GET`),
/// and the query's other parameters, as written and in order; `None` if
/// the query has no `query` and no persisted query hash (not a GraphQL
/// request, or not one to key).
pub(crate) fn canonical_query(
    query: &str,
    persisted: &HashSet<Box<str>>,
    documents: &Documents,
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
    let canonical = canonical(Value::Object(members), persisted, documents)?;
    Some((canonical, rest.join("&")))
}

/// The canonical form of the GraphQL request `request` (a JSON object).
fn canonical(
    request: Value<'_>,
    persisted: &HashSet<Box<str>>,
    documents: &Documents,
) -> Option<Vec<u8>> {
    let operation = match request.get("operationName") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name.as_ref()),
        Some(_) => return None,
    };
    let document = match request.get("query") {
        Some(Value::String(document)) => Some(documents.normalised(document, operation)?),
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
            ("query", Some(document)) => (name, Value::String(Cow::Borrowed(&**document))),
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

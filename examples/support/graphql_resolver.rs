//! The `graphql` example's resolver: a small one over `apollo-parser`'s
//! syntax tree, for `product(id)` and the `rename(id, name)` mutation, each
//! root field resolved with the database and counted.

use super::axum_server::Database;
use apollo_parser::cst::{self, CstNode};
use apollo_parser::Parser;
use axum::extract::{Query, State};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Resolves GraphQL requests against the products database, counting its
/// root field resolutions (one per request here).
#[derive(Clone)]
pub struct Resolver {
    db: Database,
    calls: Arc<AtomicU64>,
    latency: std::time::Duration,
}

/// A GraphQL error answer.
fn error(message: impl Into<String>) -> Value {
    json!({ "errors": [{ "message": message.into() }] })
}

impl Resolver {
    /// A resolver over `db` that spends `latency` on each root field
    /// besides its database queries (as a resolver calling another
    /// service would, concurrently with the others), with no call counted
    /// yet.
    pub fn new(db: Database, latency: std::time::Duration) -> Self {
        Self {
            db,
            calls: Arc::default(),
            latency,
        }
    }

    /// How many root fields it resolved.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// `/graphql`, over `POST` (a JSON body) and `GET` (the query string).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/graphql", post(over_post).get(over_get))
            .with_state(self.clone())
    }

    /// The answer to one GraphQL request (`query`, `operationName`,
    /// `variables`).
    pub async fn execute(&self, request: &Value) -> Value {
        // The syntax tree is not `Send`: read what to resolve first.
        let (mutation, fields) = match plan(request) {
            Ok(plan) => plan,
            Err(e) => return error(e),
        };
        let mut data = Map::new();
        for field in fields {
            let value = match (mutation, field.name.as_str()) {
                (false, "product") => self.product(&field.args).await,
                (true, "rename") => self.rename(&field.args).await,
                _ => return error(format!("no field {}", field.name)),
            };
            match value {
                Ok(product) => data.insert(field.key, project(product, &field.wanted)),
                Err(e) => return error(e),
            };
        }
        json!({ "data": data })
    }

    async fn product(&self, args: &HashMap<String, Value>) -> Result<Value, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.latency).await;
        let id = id(args)?;
        self.load(id).await
    }

    async fn rename(&self, args: &HashMap<String, Value>) -> Result<Value, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.latency).await;
        let id = id(args)?;
        let name = args
            .get("name")
            .and_then(Value::as_str)
            .ok_or("rename needs a name")?;
        self.db
            .rename(id, name.to_owned())
            .await
            .map_err(|e| e.to_string())?;
        self.load(id).await
    }

    async fn load(&self, id: i64) -> Result<Value, String> {
        match self.db.product_json(id).await.map_err(|e| e.to_string())? {
            Some(json) => serde_json::from_str(&json).map_err(|e| e.to_string()),
            None => Ok(Value::Null),
        }
    }
}

/// A root field to resolve: its name, the key of its answer (its alias or
/// name), its arguments and the subfields it selects.
struct RootField {
    name: String,
    key: String,
    args: HashMap<String, Value>,
    wanted: Vec<String>,
}

/// Whether the request's operation is a mutation, and its root fields.
fn plan(request: &Value) -> Result<(bool, Vec<RootField>), String> {
    let document = request["query"].as_str().ok_or("no query")?;
    let tree = Parser::new(document).parse();
    if let Some(e) = tree.errors().next() {
        return Err(format!("syntax: {}", e.message()));
    }
    let named = request["operationName"].as_str();
    let operation = tree
        .document()
        .definitions()
        .filter_map(|d| match d {
            cst::Definition::OperationDefinition(op) => Some(op),
            _ => None,
        })
        .find(|op| named.is_none_or(|name| op.name().is_some_and(|n| n.text() == name)))
        .ok_or("no such operation")?;
    let mutation = operation
        .operation_type()
        .is_some_and(|t| t.mutation_token().is_some());
    let variables = request["variables"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut fields = Vec::new();
    for selection in operation
        .selection_set()
        .into_iter()
        .flat_map(|s| s.selections())
    {
        let cst::Selection::Field(field) = selection else {
            return Err("only fields are resolved".into());
        };
        let name = field
            .name()
            .ok_or("a field without a name")?
            .text()
            .to_string();
        let key = field
            .alias()
            .and_then(|a| a.name())
            .map_or(name.clone(), |n| n.text().to_string());
        let wanted = field
            .selection_set()
            .into_iter()
            .flat_map(|s| s.selections())
            .filter_map(|s| match s {
                cst::Selection::Field(sub) => sub.name().map(|n| n.text().to_string()),
                _ => None,
            })
            .collect();
        let args = arguments(&field, &variables);
        fields.push(RootField {
            name,
            key,
            args,
            wanted,
        });
    }
    Ok((mutation, fields))
}

/// The field's arguments, variables replaced by their values.
fn arguments(field: &cst::Field, variables: &Map<String, Value>) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    for argument in field.arguments().into_iter().flat_map(|a| a.arguments()) {
        let (Some(name), Some(value)) = (argument.name(), argument.value()) else {
            continue;
        };
        let value = match value {
            cst::Value::Variable(v) => v
                .name()
                .and_then(|n| variables.get(n.text().as_str()).cloned())
                .unwrap_or(Value::Null),
            cst::Value::StringValue(s) => Value::String(String::from(&s)),
            cst::Value::IntValue(i) => i
                .syntax()
                .text()
                .to_string()
                .parse::<i64>()
                .map_or(Value::Null, Value::from),
            _ => Value::Null,
        };
        out.insert(name.text().to_string(), value);
    }
    out
}

/// An `ID` argument, given as a string or a number.
fn id(args: &HashMap<String, Value>) -> Result<i64, String> {
    match args.get("id") {
        Some(Value::String(s)) => s.parse().map_err(|_| format!("bad id {s}")),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| format!("bad id {n}")),
        _ => Err("an id is needed".into()),
    }
}

/// The product with only the subfields `wanted`.
fn project(product: Value, wanted: &[String]) -> Value {
    let Value::Object(all) = product else {
        return product;
    };
    let pick = |name: &String| (name.clone(), all.get(name).cloned().unwrap_or(Value::Null));
    Value::Object(wanted.iter().map(pick).collect())
}

async fn over_post(State(resolver): State<Resolver>, body: Bytes) -> Json<Value> {
    match serde_json::from_slice::<Value>(&body) {
        Ok(request) => Json(resolver.execute(&request).await),
        Err(e) => Json(error(format!("body: {e}"))),
    }
}

async fn over_get(
    State(resolver): State<Resolver>,
    Query(params): Query<HashMap<String, String>>,
) -> Json<Value> {
    let variables = match params
        .get("variables")
        .map(|v| serde_json::from_str::<Value>(v))
    {
        None => Value::Null,
        Some(Ok(v)) => v,
        Some(Err(e)) => return Json(error(format!("variables: {e}"))),
    };
    let request = json!({
        "query": params.get("query"),
        "operationName": params.get("operationName"),
        "variables": variables,
    });
    Json(resolver.execute(&request).await)
}

//! GraphQL requests through the real stack: variants of one query share a
//! flight; other variables, other operations, mutations and rejected
//! documents never do.

mod support;

use support::body::{answers, burst, post, stack, until_calls, Origin};
use support::until;
use tower_coalesce::body_keys::{BodyKeys, Route};
use tower_coalesce::{CoalesceConfig, HttpKey};

fn keys() -> BodyKeys {
    BodyKeys::new(HttpKey::new()).route(Route::graphql("/graphql"))
}

fn query(i: usize) -> String {
    let gap = " ".repeat(i % 7);
    match i % 2 {
        0 => format!(
            r#"{{"query":"query P($id: ID!) {{{gap}product(id: $id) {{ id name }} }}","variables":{{"id":"7","lang":"en"}}}}"#
        ),
        _ => format!(
            r##"{{"variables":{{"lang":"en", "id":"7"}},"query":"# a comment\nquery P($id: ID!){{product(id:$id){{id,name}}}}{gap}"}}"##
        ),
    }
}

#[tokio::test]
async fn whitespace_and_variable_order_variants_share_one_origin_call() {
    const N: usize = 100;
    let origin = Origin::gated();
    let (svc, layer) = stack(keys(), CoalesceConfig::new(), &origin);
    let tasks = burst(&svc, (0..N).map(|i| post("/graphql", &query(i))).collect()).await;
    until(&layer, "every follower", |s| s.followers == (N - 1) as u64).await;
    origin.open_gate();
    assert_eq!(answers(tasks).await.len(), N);
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn different_variables_or_operations_never_share() {
    let origin = Origin::gated();
    let (svc, _) = stack(keys(), CoalesceConfig::new(), &origin);
    let reqs = vec![
        post("/graphql", &query(0)),
        post("/graphql", &query(0).replace("\"7\"", "\"8\"")),
        post(
            "/graphql",
            r#"{"query":"query A { a } query B { b }","operationName":"A"}"#,
        ),
        post(
            "/graphql",
            r#"{"query":"query A { a } query B { b }","operationName":"B"}"#,
        ),
    ];
    let tasks = burst(&svc, reqs).await;
    until_calls(&origin, 4).await;
    origin.open_gate();
    answers(tasks).await;
    assert_eq!(origin.calls(), 4);
}

#[tokio::test]
async fn a_mutation_burst_reaches_the_origin_once_per_request() {
    const N: usize = 20;
    let origin = Origin::gated();
    let (svc, layer) = stack(keys(), CoalesceConfig::new(), &origin);
    let mutation = r#"{"query":"mutation R($id: ID!) { rename(id: $id, name: \"x\") { id } }","variables":{"id":"7"}}"#;
    let tasks = burst(&svc, (0..N).map(|_| post("/graphql", mutation)).collect()).await;
    // All of them at the origin at once: none waits on another.
    until_calls(&origin, N).await;
    origin.open_gate();
    assert_eq!(answers(tasks).await.len(), N);
    assert_eq!(origin.calls(), N);
    assert_eq!(layer.stats().followers, 0);
}

#[tokio::test]
async fn a_document_the_parser_rejects_bypasses() {
    let origin = Origin::open();
    let (svc, layer) = stack(keys(), CoalesceConfig::new(), &origin);
    let broken = r#"{"query":"query { product(id: 7) { id "}"#;
    answers(burst(&svc, (0..5).map(|_| post("/graphql", broken)).collect()).await).await;
    assert_eq!(origin.calls(), 5);
    assert_eq!(layer.stats().bypasses, 5);
}

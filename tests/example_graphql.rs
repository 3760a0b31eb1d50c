//! The `graphql` example, served over real TCP: a burst of one query in
//! many writings costs one resolver call, a burst of mutations one each,
//! and without the layer every query costs one.

#[path = "../examples/graphql.rs"]
#[allow(dead_code)]
mod graphql;

use graphql::{app, burst, database, query_body, serve, Resolver, MUTATION};
use std::net::SocketAddr;
use std::time::Duration;

/// The example's app on a loopback port, with the layer or without, its
/// resolver taking `resolve` a call.
async fn started(layer: bool, resolve: Duration) -> (SocketAddr, Resolver) {
    let db = database(Duration::from_millis(1)).unwrap();
    let resolver = Resolver::new(db, resolve);
    let app = app(resolver.clone(), layer).unwrap();
    let addr = serve(app, ([127, 0, 0, 1], 0).into()).await.unwrap();
    (addr, resolver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_burst_costs_one_resolver_call_and_mutations_one_each() {
    const N: usize = 300;
    const M: usize = 30;
    // Slow enough that the burst gathers behind its first request.
    let (addr, resolver) = started(true, Duration::from_millis(1000)).await;
    let queries = burst(addr, &resolver, (0..N).map(query_body).collect())
        .await
        .unwrap();
    assert_eq!(queries.requests, N);
    assert_eq!(queries.resolver_calls, 1, "{queries:?}");
    assert_eq!(queries.distinct_answers, 1);
    let mutations = burst(addr, &resolver, vec![MUTATION.to_owned(); M])
        .await
        .unwrap();
    assert_eq!(mutations.resolver_calls, M as u64, "{mutations:?}");

    // The answer is the database's, renamed by the mutations.
    let after = burst(addr, &resolver, vec![query_body(1)]).await.unwrap();
    assert_eq!(after.resolver_calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_layer_every_query_costs_a_resolver_call() {
    const N: usize = 20;
    let (addr, resolver) = started(false, Duration::from_millis(1)).await;
    let queries = burst(addr, &resolver, (0..N).map(query_body).collect())
        .await
        .unwrap();
    assert_eq!(queries.resolver_calls, N as u64);
    assert_eq!(queries.distinct_answers, 1, "every writing gets one answer");
}

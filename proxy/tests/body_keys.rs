//! Routes keyed by their bodies, over real TCP: a burst of GraphQL queries
//! written with other whitespace and another order of variables costs the
//! upstream one call, made with the leader's body; mutations reach it once
//! each; a JSON route shares canonical bodies and never different ones; a
//! body over the route's limit goes on whole, unkeyed.

mod support;

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// An upstream whose `POST`s take 300 ms (so a burst overlaps), count, and
/// answer with the body they read.
async fn upstream() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let echo = move |body: Bytes| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            body
        }
    };
    let app = Router::new()
        .route("/graphql", post(echo.clone()))
        .route("/search", post(echo));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

/// The proxy, its config file in a directory of `name`'s own (each test's
/// file names its own upstream).
async fn proxy(upstream: &str, name: &str) -> (SocketAddr, std::path::PathBuf) {
    let dir = support::scratch(name);
    let file = dir.join("proxy.toml");
    std::fs::write(
        &file,
        format!(
            "upstream = \"{upstream}\"\n\
             \n\
             [[route]]\n\
             path = \"/graphql\"\n\
             upstream = \"{upstream}\"\n\
             mode = \"coalesce\"\n\
             body-keys = \"graphql\"\n\
             \n\
             [[route]]\n\
             path = \"/search\"\n\
             upstream = \"{upstream}\"\n\
             mode = \"coalesce\"\n\
             body-keys = \"json\"\n\
             body-limit-bytes = 1024\n"
        ),
    )
    .unwrap();
    let args = support::args(&["--config", file.to_str().unwrap()]);
    (support::start(&args).await.0, dir)
}

/// Sends each body to `path` at once; the answers' outcomes and bodies.
async fn burst(addr: SocketAddr, path: &str, bodies: Vec<String>) -> Vec<(String, String)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let sent = bodies.into_iter().map(|body| {
        let client = client.clone();
        let req = Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(Full::from(body))
            .unwrap();
        tokio::spawn(async move {
            let res = client.request(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let outcome = res.headers()["x-coalesce"].to_str().unwrap().to_owned();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (outcome, String::from_utf8_lossy(&body).into_owned())
        })
    });
    let mut answers = Vec::new();
    for task in sent.collect::<Vec<_>>() {
        answers.push(task.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_queries_that_mean_the_same_share_one_upstream_call_and_mutations_do_not() {
    let (upstream, calls) = upstream().await;
    let (addr, dir) = proxy(&upstream, "body-keys-graphql").await;
    // One query, written 40 ways: spacing, a comment, variables in
    // another order.
    let bodies: Vec<String> = (0..40)
        .map(|i| match i % 4 {
            0 => r#"{"query":"query P($id: ID!, $n: Int) { product(id: $id) { name price(n: $n) } }","variables":{"id":"7","n":2}}"#.to_owned(),
            1 => r#"{"variables":{"n":2,"id":"7"},"query":"query P($id: ID!, $n: Int) {product(id:$id){name price(n:$n)}}"}"#.to_owned(),
            2 => r#"{ "query" : "query P($id: ID!, $n: Int) {\n  product(id: $id) {\n    name\n    price(n: $n)\n  }\n}" , "variables" : { "id" : "7" , "n" : 2 } }"#.to_owned(),
            _ => r##"{"query":"# a comment\nquery P($id: ID!, $n: Int) { product(id: $id) { name, price(n: $n) } }","variables":{"id":"7","n":2}}"##.to_owned(),
        })
        .collect();
    let answers = burst(addr, "/graphql", bodies.clone()).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one upstream call for the burst"
    );
    let leaders: Vec<_> = answers.iter().filter(|(o, _)| o == "leader").collect();
    assert_eq!(leaders.len(), 1);
    // Every caller got the leader's answer: the upstream saw one body.
    assert!(answers.iter().all(|(_, body)| *body == leaders[0].1));
    assert!(bodies.contains(&leaders[0].1));

    // Another value of a variable is another question.
    let other = r#"{"query":"query P($id: ID!, $n: Int) { product(id: $id) { name price(n: $n) } }","variables":{"id":"8","n":2}}"#;
    let answers = burst(addr, "/graphql", vec![other.to_owned()]).await;
    assert_eq!(answers[0].1, other);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Mutations are never coalesced.
    let mutation = r#"{"query":"mutation { buy(id: \"7\") { ok } }"}"#.to_owned();
    let answers = burst(addr, "/graphql", vec![mutation; 10]).await;
    assert!(answers.iter().all(|(o, _)| o == "bypass"));
    assert_eq!(calls.load(Ordering::SeqCst), 12);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_route_shares_canonical_bodies_and_lets_large_ones_through_whole() {
    let (upstream, calls) = upstream().await;
    let (addr, dir) = proxy(&upstream, "body-keys-json").await;
    let same = [
        r#"{"q":"shoes","page":1,"filters":{"size":42,"colour":"red"}}"#,
        r#"{ "page": 1, "q": "shoes", "filters": { "colour": "red", "size": 42 } }"#,
    ];
    let bodies: Vec<String> = (0..20).map(|i| same[i % 2].to_owned()).collect();
    let answers = burst(addr, "/search", bodies).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(answers.iter().filter(|(o, _)| o == "follower").count(), 19);

    // Over the route's 1 KiB: unkeyed, each to the upstream, byte for byte.
    let large = format!(r#"{{"q":"{}"}}"#, "x".repeat(2_000));
    let answers = burst(addr, "/search", vec![large.clone(); 3]).await;
    assert!(answers
        .iter()
        .all(|(o, body)| o == "bypass" && *body == large));
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    // `check` says which routes key bodies.
    let bin = env!("CARGO_BIN_EXE_coalesce-proxy");
    let checked = std::process::Command::new(bin)
        .args([
            "check",
            "--config",
            dir.join("proxy.toml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&checked.stdout);
    assert!(text.contains("GraphQL bodies keyed"), "{text}");
    assert!(text.contains("JSON bodies keyed"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

//! A GraphQL endpoint over the `axum_server` example's SQLite products,
//! behind the coalescing layer with GraphQL body keys: a burst of one
//! query, however it is written, costs one resolver call; mutations are
//! never coalesced.
//!
//! `POST /graphql` (and `GET /graphql?query=...`) answers
//! ```graphql
//! query Product($id: ID!) { product(id: $id) { id name price_cents } }
//! mutation Rename($id: ID!, $name: String!) { rename(id: $id, name: $name) { id name } }
//! ```
//! The resolver is a small one written over `apollo-parser`'s syntax tree
//! (the parser the layer itself uses), not `async-graphql`: its current
//! releases need Rust 1.89, above this crate's 1.88, and a schema framework
//! would hide what this example is about. It resolves the fields above,
//! each root field counted as one resolver call, which spends
//! `--resolve-ms` (a downstream call, concurrent with the others) and then
//! queries the database (one connection, as in `axum_server`: queries
//! queue on it, each `--query-ms` longer than it needs).
//!
//! # Run
//! ```text
//! cargo run --example graphql --features graphql
//!     [--burst 1000] [--mutations 100] [--resolve-ms 1000] [--query-ms 1]
//!     [--serve 127.0.0.1:3000]
//! ```
//! Without `--serve` it measures, over loopback TCP: a burst of `--burst`
//! concurrent identical queries written with different whitespace,
//! comments and variable order (expect `resolver calls: 1`), then
//! `--mutations` concurrent identical mutations (expect one call each),
//! then the same query burst against the endpoint without the layer (one
//! call per request), and prints the counts and times. With `--serve` it
//! serves the layered endpoint until stopped:
//! ```text
//! curl -s localhost:3000/graphql -H 'content-type: application/json' \
//!     -d '{"query":"query($id: ID!) { product(id: $id) { name } }","variables":{"id":"7"}}'
//! ```

#[allow(dead_code)]
#[path = "axum_server.rs"]
mod axum_server;
#[path = "support/graphql_resolver.rs"]
mod resolver;

use axum::body::Body;
use axum_server::{BoxError, Database, Metrics};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceBuilder;
use tower_coalesce::body_keys::{BodyKeys, BufferedBody, Route};
use tower_coalesce::{CoalesceBody, CoalesceConfig, CoalesceLayer, HttpKey};

pub use resolver::Resolver;

/// The endpoint: the resolver's routes, behind the buffering and
/// coalescing layers if `layered`.
pub fn app(resolver: Resolver, layered: bool) -> Result<axum::Router, BoxError> {
    let router = resolver.router();
    if !layered {
        return Ok(router);
    }
    // GraphQL at `/graphql`; other `GET`s keyed by URL (none here). The
    // answer does not depend on the name the server is reached by.
    let keys = BodyKeys::new(HttpKey::new().without_authority()).route(Route::graphql("/graphql"));
    let coalesce = CoalesceLayer::builder(
        CoalesceConfig::new()
            .methods(keys.methods())
            .outcome_header("x-coalesce"),
    )
    .extractor(keys.clone())
    .build()?;
    let service = ServiceBuilder::new()
        .map_response(|res: Response<CoalesceBody<Body>>| res.map(Body::new))
        .layer(keys.buffer_layer())
        .map_request(|req: Request<BufferedBody<Body>>| req.map(Body::new))
        .layer(coalesce)
        .service(router);
    Ok(axum::Router::new().fallback_service(service))
}

/// Serves `app` on `listen`; the address it got.
pub async fn serve(app: axum::Router, listen: SocketAddr) -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// The product query, written the `i`th way: whitespace, a comment,
/// commas, and the order of its variables change; what it asks does not.
pub fn query_body(i: usize) -> String {
    let gap = " ".repeat(i % 5);
    match i % 3 {
        0 => format!(
            r#"{{"query":"query Product($id: ID!, $currency: String) {{{gap}product(id: $id) {{ id name price_cents }} }}","variables":{{"id":"7","currency":"EUR"}}}}"#
        ),
        1 => format!(
            r#"{{"variables":{{"currency":"EUR","id":"7"}},"operationName":"Product","query":"query Product($id: ID!, $currency: String) {{\n  product(id: $id) {{\n    id,\n    name,\n    price_cents\n  }}\n}}{gap}"}}"#
        ),
        _ => format!(
            r##"{{ "query" : "# one product\nquery Product($id: ID!,$currency: String){{product(id:$id){{id name price_cents}}}}" , "variables" : {{ "id" : "7" , "currency" : "EUR" }}{gap}}}"##
        ),
    }
}

/// The rename mutation, the same every time.
pub const MUTATION: &str = r#"{"query":"mutation Rename($id: ID!, $name: String!) { rename(id: $id, name: $name) { id name } }","variables":{"id":"7","name":"Shiny Lamp"}}"#;

/// What a burst did: requests, resolver calls it cost, distinct answers,
/// and how long it took.
#[derive(Debug)]
pub struct Burst {
    pub requests: usize,
    pub resolver_calls: u64,
    pub distinct_answers: usize,
    pub took: Duration,
}

/// Sends `bodies` to `addr` at once, each a `POST /graphql` on a
/// connection of its own: every connection is made first, then every
/// request goes out together.
pub async fn burst(
    addr: SocketAddr,
    resolver: &Resolver,
    bodies: Vec<String>,
) -> Result<Burst, BoxError> {
    let before = resolver.calls();
    let requests = bodies.len();
    let ready = Arc::new(tokio::sync::Barrier::new(requests + 1));
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let ready = ready.clone();
            tokio::spawn(async move {
                let connected = connect(addr).await;
                ready.wait().await;
                let mut sender = connected?;
                let req = Request::post("/graphql")
                    .header("host", addr.to_string())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))?;
                let res = sender.send_request(req).await?;
                if !res.status().is_success() {
                    return Err(format!("status {}", res.status()).into());
                }
                Ok::<_, BoxError>(res.into_body().collect().await?.to_bytes())
            })
        })
        .collect();
    ready.wait().await;
    let started = Instant::now();
    let mut answers = std::collections::HashSet::new();
    for task in tasks {
        answers.insert(task.await??);
    }
    Ok(Burst {
        requests,
        resolver_calls: resolver.calls() - before,
        distinct_answers: answers.len(),
        took: started.elapsed(),
    })
}

/// An HTTP/1.1 connection to `addr`.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// A database like `axum_server`'s (products `1..=500`, in memory), each
/// query taking `latency` longer than it needs.
pub fn database(latency: Duration) -> Result<Database, BoxError> {
    let queries = Arc::new(AtomicU64::new(0));
    Ok(Database::seeded(
        None,
        500,
        latency,
        queries,
        Metrics::new(),
    )?)
}

fn flag(args: &[String], name: &str) -> Option<String> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1).cloned()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |name: &str, default: u64| -> Result<u64, BoxError> {
        flag(&args, name).map_or(Ok(default), |v| {
            v.parse().map_err(|e| format!("{name} {v}: {e}").into())
        })
    };
    let latency = Duration::from_millis(number("--query-ms", 1)?);
    let resolving = Duration::from_millis(number("--resolve-ms", 1000)?);
    if let Some(listen) = flag(&args, "--serve") {
        let resolver = Resolver::new(database(latency)?, resolving);
        let addr = serve(app(resolver, true)?, listen.parse()?).await?;
        println!("serving GraphQL on http://{addr}/graphql");
        return Ok(tokio::signal::ctrl_c().await?);
    }
    let n = number("--burst", 1000)? as usize;
    let m = number("--mutations", 100)? as usize;

    let resolver = Resolver::new(database(latency)?, resolving);
    let addr = serve(app(resolver.clone(), true)?, ([127, 0, 0, 1], 0).into()).await?;
    let queries = burst(addr, &resolver, (0..n).map(query_body).collect()).await?;
    report("queries, with the layer", &queries);
    let mutations = burst(addr, &resolver, vec![MUTATION.to_owned(); m]).await?;
    report("mutations, with the layer", &mutations);

    let bare = Resolver::new(database(latency)?, resolving);
    let addr = serve(app(bare.clone(), false)?, ([127, 0, 0, 1], 0).into()).await?;
    let without = burst(addr, &bare, (0..n).map(query_body).collect()).await?;
    report("queries, without the layer", &without);
    Ok(())
}

fn report(what: &str, burst: &Burst) {
    println!(
        "{what}: {} requests, resolver calls: {}, distinct answers: {}, {:.1} ms",
        burst.requests,
        burst.resolver_calls,
        burst.distinct_answers,
        burst.took.as_secs_f64() * 1e3
    );
}

//! The `axum_server` example, served over real TCP: its SQLite-backed product
//! route behind the layer, its `/metrics`, and two instances sharing a Redis.

mod support;

#[path = "../examples/axum_server.rs"]
mod axum_server;

use axum_server::{build, Settings, USAGE};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::redis::RedisServer;
use tokio::task::JoinHandle;
use tower_coalesce::CoalesceLayer;

const PRODUCT_7: &str = r#"{"id":7,"name":"Heavy Lamp","price_cents":458}"#;
const PRODUCT_8: &str = r#"{"id":8,"name":"Quiet Spanner","price_cents":495}"#;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// One instance of the example, serving on a loopback port.
struct Instance {
    addr: SocketAddr,
    layer: CoalesceLayer<tower_coalesce::HttpKey>,
    server: JoinHandle<()>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn settings(args: &[&str]) -> Settings {
    Settings::parse(args.iter().map(|a| a.to_string()), None)
        .expect("valid arguments")
        .expect("not a help request")
}

async fn start(settings: &Settings, queries: Arc<AtomicU64>) -> Instance {
    let app = build(settings, queries).await.expect("the app starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app.router).await.unwrap() });
    Instance {
        addr,
        layer: app.layer,
        server,
    }
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Status, `x-coalesce` value (if any) and body of one response.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    outcome: Option<String>,
    body: Bytes,
}

async fn fetch(client: HttpClient, addr: SocketAddr, path: &str) -> Reply {
    let uri: http::Uri = format!("http://{addr}{path}").parse().unwrap();
    let res = client.get(uri).await.expect("the server answers");
    let status = res.status();
    let outcome = res
        .headers()
        .get("x-coalesce")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        outcome,
        body,
    }
}

/// Sends every request at once, each on its own task, and returns the replies
/// in order.
async fn burst(client: &HttpClient, requests: Vec<(SocketAddr, String)>) -> Vec<Reply> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(addr, path)| {
            let client = client.clone();
            tokio::spawn(async move { fetch(client, addr, &path).await })
        })
        .collect();
    let mut replies = Vec::with_capacity(tasks.len());
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    replies
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|value| value.parse().ok())
}

fn count(replies: &[Reply], outcome: &str) -> usize {
    replies
        .iter()
        .filter(|r| r.outcome.as_deref() == Some(outcome))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_for_one_product_costs_one_database_query() {
    const N: usize = 200;
    // A TTL far beyond the test: requests that arrive after the query has
    // answered are hits whatever the machine's speed, never a second query.
    let settings = settings(&["--ttl-ms", "60000", "--query-ms", "200"]);
    let queries = Arc::new(AtomicU64::new(0));
    let app = start(&settings, queries.clone()).await;
    let client = client();

    let replies = burst(&client, vec![(app.addr, "/products/7".into()); N]).await;

    assert_eq!(queries.load(Ordering::SeqCst), 1, "one query for the burst");
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, PRODUCT_7);
        let outcome = reply.outcome.as_deref().expect("an x-coalesce header");
        assert!(
            ["leader", "follower", "hit"].contains(&outcome),
            "unexpected outcome {outcome}"
        );
    }
    assert_eq!(count(&replies, "leader"), 1);
    assert_eq!(
        count(&replies, "follower") + count(&replies, "hit"),
        N - 1,
        "{:?}",
        app.layer.stats()
    );

    let scrape = fetch(client.clone(), app.addr, "/metrics").await;
    assert_eq!(scrape.status, StatusCode::OK);
    assert_eq!(scrape.outcome, None, "/metrics is outside the layer");
    let text = std::str::from_utf8(&scrape.body).unwrap();
    assert!(text.lines().any(|l| l == "db_queries_total 1"), "{text}");
    let stats = app.layer.stats();
    assert_eq!(metric(text, "coalesce_requests_total"), Some(N as u64));
    assert_eq!(metric(text, "coalesce_origin_calls_total"), Some(1));
    assert_eq!(
        metric(text, "coalesce_followers_total"),
        Some(stats.followers)
    );
    assert_eq!(metric(text, "coalesce_hits_total"), Some(stats.hits));
    assert_eq!(metric(text, "coalesce_backend_errors_total"), Some(0));

    let again = fetch(client.clone(), app.addr, "/metrics").await;
    let text = std::str::from_utf8(&again.body).unwrap();
    assert_eq!(
        metric(text, "coalesce_requests_total"),
        Some(N as u64),
        "scrapes are not counted as requests"
    );
    assert_eq!(app.layer.flights_in_progress(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_products_are_not_merged_and_unknown_ids_are_404() {
    let settings = settings(&["--ttl-ms", "60000", "--query-ms", "50", "--products", "500"]);
    let queries = Arc::new(AtomicU64::new(0));
    let app = start(&settings, queries.clone()).await;
    let client = client();

    let paths = (0..100).map(|i| (app.addr, format!("/products/{}", 7 + i % 2)));
    let replies = burst(&client, paths.collect()).await;
    assert_eq!(queries.load(Ordering::SeqCst), 2, "one query per product");
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.status, StatusCode::OK);
        let expected = if i % 2 == 0 { PRODUCT_7 } else { PRODUCT_8 };
        assert_eq!(reply.body, expected, "request {i} got another product");
    }
    assert_eq!(count(&replies, "leader"), 2);

    let unknown = burst(&client, vec![(app.addr, "/products/501".into()); 20]).await;
    for reply in &unknown {
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.body, r#"{"error":"no such product"}"#);
    }
    assert_eq!(
        queries.load(Ordering::SeqCst),
        3,
        "a burst for an unknown id is one query too"
    );

    let elsewhere = fetch(client.clone(), app.addr, "/nowhere").await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    assert_eq!(elsewhere.outcome, None, "unmatched paths skip the layer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_query_once_per_product() {
    const N: usize = 200;
    let redis = RedisServer::start();
    // Answers cross instances through Redis, so the TTL must be above zero;
    // the long query keeps both instances' first requests inside one flight.
    let settings = settings(&[
        "--redis",
        &redis.url(),
        "--ttl-ms",
        "60000",
        "--query-ms",
        "300",
    ]);
    // Each instance seeds and queries its own database; one counter sees both.
    let queries = Arc::new(AtomicU64::new(0));
    let a = start(&settings, queries.clone()).await;
    let b = start(&settings, queries.clone()).await;
    let client = client();

    // Interleaved: instance a, b, a, b... and product 7, 7, 8, 8, 7, 7...
    let requests = (0..N).map(|i| {
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        (addr, format!("/products/{}", 7 + (i / 2) % 2))
    });
    let replies = burst(&client, requests.collect()).await;

    let (sa, sb) = (a.layer.stats(), b.layer.stats());
    assert_eq!(
        queries.load(Ordering::SeqCst),
        2,
        "one query per product across both instances: {sa:?} {sb:?}"
    );
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.status, StatusCode::OK);
        let expected = if (i / 2) % 2 == 0 {
            PRODUCT_7
        } else {
            PRODUCT_8
        };
        assert_eq!(reply.body, expected, "request {i} got another product");
    }
    assert_eq!(count(&replies, "leader"), 2, "one leader per product");
    assert_eq!(count(&replies, "follower") + count(&replies, "hit"), N - 2);
    assert_eq!(sa.requests + sb.requests, N as u64);
    assert_eq!(sa.origin_calls + sb.origin_calls, 2);
    assert_eq!(
        (sa.backend_errors, sb.backend_errors),
        (0, 0),
        "{sa:?} {sb:?}"
    );

    let mut scraped = 0;
    for instance in [&a, &b] {
        let scrape = fetch(client.clone(), instance.addr, "/metrics").await;
        let text = std::str::from_utf8(&scrape.body).unwrap();
        scraped += metric(text, "db_queries_total").expect("db_queries_total");
        assert_eq!(instance.layer.flights_in_progress(), 0);
    }
    assert_eq!(scraped, 2, "each instance reports its own queries");
}

#[test]
fn flags_and_redis_url_are_read() {
    let parse = |args: &[&str], env: Option<&str>| {
        Settings::parse(args.iter().map(|a| a.to_string()), env.map(String::from))
    };
    assert_eq!(parse(&[], None), Ok(Some(Settings::default())));
    let s = parse(
        &[
            "--listen=127.0.0.1:0",
            "--ttl-ms",
            "5",
            "--query-ms=7",
            "--products",
            "9",
        ],
        Some("redis://env/"),
    )
    .unwrap()
    .unwrap();
    assert_eq!(s.listen, SocketAddr::from(([127, 0, 0, 1], 0)));
    assert_eq!(s.ttl, Duration::from_millis(5));
    assert_eq!(s.query_latency, Duration::from_millis(7));
    assert_eq!(s.products, 9);
    assert_eq!(s.redis.as_deref(), Some("redis://env/"));

    let flag_wins = parse(&["--redis", "redis://flag/"], Some("redis://env/"));
    assert_eq!(
        flag_wins.unwrap().unwrap().redis.as_deref(),
        Some("redis://flag/")
    );
    assert_eq!(parse(&[], Some("")).unwrap().unwrap().redis, None);
    let cluster = parse(
        &["--redis-cluster", "redis://a/,redis://b/"],
        Some("redis://env/"),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        (cluster.redis, cluster.redis_cluster),
        (None, vec!["redis://a/".to_owned(), "redis://b/".to_owned()])
    );
    assert!(parse(
        &["--redis", "redis://a/", "--redis-cluster", "redis://b/"],
        None
    )
    .is_err());
    assert_eq!(parse(&["--help"], None), Ok(None));
    assert!(parse(&["--ttl-ms"], None).is_err());
    assert!(parse(&["--ttl-ms", "soon"], None).is_err());
    assert!(parse(&["--listen", "localhost"], None).is_err());
    assert!(parse(&["--verbose"], None).is_err());
    for flag in [
        "--listen",
        "--redis",
        "--ttl-ms",
        "--query-ms",
        "--products",
    ] {
        assert!(USAGE.contains(flag), "the help describes {flag}");
    }
}

/// `PUT`s `name` as product `id`'s name through `addr`; the status.
async fn rename(addr: SocketAddr, id: u32, name: &str) -> StatusCode {
    let client: Client<HttpConnector, http_body_util::Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::put(format!("http://{addr}/products/{id}"))
        .body(http_body_util::Full::new(Bytes::from(name.to_owned())))
        .unwrap();
    client
        .request(req)
        .await
        .expect("the server answers")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_on_one_instance_is_served_by_the_other_at_once() {
    let redis = RedisServer::start();
    let dir = std::env::temp_dir().join(format!("axum-server-db-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("products.db");
    // Answers are kept a minute: only the purge can make the new name show.
    let settings = settings(&[
        "--redis",
        &redis.url(),
        "--ttl-ms",
        "60000",
        "--query-ms",
        "0",
        "--db",
        db.to_str().unwrap(),
    ]);
    let queries = Arc::new(AtomicU64::new(0));
    let a = start(&settings, queries.clone()).await;
    let b = start(&settings, queries.clone()).await;
    let client = client();
    for instance in [&a, &b, &b] {
        let reply = fetch(client.clone(), instance.addr, "/products/7").await;
        assert_eq!(reply.body, PRODUCT_7);
    }
    assert_eq!(
        fetch(client.clone(), b.addr, "/products/7")
            .await
            .outcome
            .as_deref(),
        Some("hit")
    );

    assert_eq!(
        rename(a.addr, 7, "Shiny Lamp").await,
        StatusCode::NO_CONTENT
    );
    let renamed = r#"{"id":7,"name":"Shiny Lamp","price_cents":458}"#;
    let start = std::time::Instant::now();
    loop {
        let reply = fetch(client.clone(), b.addr, "/products/7").await;
        if reply.body == renamed {
            break;
        }
        assert_eq!(reply.body, PRODUCT_7);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the other instance still serves the old name a second after the rename"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        fetch(client.clone(), a.addr, "/products/7").await.body,
        renamed
    );
    // Another product's answer is untouched; bad renames are refused.
    assert_eq!(
        fetch(client.clone(), a.addr, "/products/8").await.body,
        PRODUCT_8
    );
    assert_eq!(rename(a.addr, 7, "  ").await, StatusCode::BAD_REQUEST);
    assert_eq!(
        rename(a.addr, 100_000, "Nothing").await,
        StatusCode::NOT_FOUND
    );
    drop((a, b));
    std::fs::remove_dir_all(&dir).unwrap();
}

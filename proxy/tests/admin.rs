//! The admin endpoints over real TCP, in front of a real redis-server:
//! `/healthz`, `/readyz` turning `degraded` while Redis does not answer and
//! back when it does, `503` once draining, and `/metrics` scraped in
//! Prometheus text with the counters the requests moved.

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use coalesce_test_redis::RedisServer;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use tokio::net::TcpListener;

async fn fetch(url: String) -> (StatusCode, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::get(url)
        .header("host", "shop.example")
        .body(Full::default())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("no answer within 10 s")
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The value of the sample `name` (without labels, or the first with
/// them) in a Prometheus text exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(sent, "kill -{name} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_say_what_the_proxy_is_doing() {
    let redis = RedisServer::start();
    let app = Router::new().route(
        "/r",
        get(|| async { ([("cache-control", "max-age=60")], "r") }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // As the command does: the recorder first, then the layer.
    let metrics = coalesce_proxy::install_metrics().unwrap();
    // One route besides `--upstream`: its layer's series apart.
    let config = std::env::temp_dir().join(format!("coalesce-admin-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!("[[route]]\npath = \"/routed/\"\nupstream = \"{upstream}\"\n"),
    )
    .unwrap();
    let args = coalesce_proxy::Args::parse([
        "--upstream",
        &upstream,
        "--redis",
        &redis.url(),
        "--config",
        config.to_str().unwrap(),
    ])
    .unwrap();
    let built = coalesce_proxy::build(&args).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(coalesce_proxy::serve(
        listener,
        built.proxy,
        std::future::pending(),
    ));
    let admin = coalesce_proxy::Admin::new(built.redis, Some(metrics));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(coalesce_proxy::serve_admin(
        listener,
        admin.clone(),
        std::future::pending(),
    ));
    let at = |path: &str| format!("http://{admin_addr}{path}");

    assert_eq!(fetch(at("/healthz")).await, (StatusCode::OK, "ok\n".into()));
    assert_eq!(
        fetch(at("/readyz")).await,
        (StatusCode::OK, "ready\n".into())
    );
    assert_eq!(fetch(at("/nothing")).await.0, StatusCode::NOT_FOUND);

    // Requests move the counters /metrics shows.
    for _ in 0..5 {
        let (status, body) = fetch(format!("http://{addr}/r")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "r"));
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let routed = Request::get(format!("http://{addr}/routed/x"))
        .body(Full::default())
        .unwrap();
    client.request(routed).await.unwrap();
    let _ = std::fs::remove_file(&config);
    let (status, text) = fetch(at("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        sample(&text, "coalesce_requests_total{layer=\"default\"}"),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "coalesce_hits_total{layer=\"default\"}"),
        Some(4.0),
        "{text}"
    );
    // Histograms with buckets, the layer's label, and descriptions.
    assert!(
        text.contains("coalesce_flight_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(text.contains("layer=\"default\""), "{text}");
    assert!(
        text.contains("coalesce_requests_total{layer=\"route-1\"} 1"),
        "{text}"
    );
    assert!(text.contains("# HELP coalesce_requests_total"), "{text}");
    // The proxy's own: responses by outcome and status class, time to the
    // head, and the upstream's time for every request it was sent.
    let count = |series: &str| sample(&text, series).unwrap_or(0.0);
    assert_eq!(
        count("coalesce_proxy_responses_total{outcome=\"hit\",status=\"2xx\"}"),
        4.0,
        "{text}"
    );
    // The leader under `--upstream` got a 200; the routed one a 404.
    assert_eq!(
        count("coalesce_proxy_responses_total{outcome=\"leader\",status=\"2xx\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        count("coalesce_proxy_responses_total{outcome=\"leader\",status=\"4xx\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        count("coalesce_proxy_ttfb_seconds_count{outcome=\"hit\"}"),
        4.0,
        "{text}"
    );
    assert!(
        text.contains("coalesce_proxy_ttfb_seconds_bucket{outcome=\"leader\",le=\"0.0005\"}"),
        "{text}"
    );
    assert_eq!(
        count("coalesce_proxy_upstream_duration_seconds_count{request=\"flight\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(
        count("coalesce_proxy_upstream_responses_total{request=\"flight\",status=\"2xx\"}"),
        1.0,
        "{text}"
    );
    // Only what happened is shown.
    assert!(!text.contains("status=\"timeout\""), "{text}");
    assert!(
        text.contains("# HELP coalesce_proxy_ttfb_seconds"),
        "{text}"
    );

    // Redis stops answering: still serving, degraded; back when it answers.
    signal(redis.pid(), "STOP");
    let (status, body) = fetch(at("/readyz")).await;
    signal(redis.pid(), "CONT");
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("degraded"), "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fetch(at("/readyz")).await.1 != "ready\n" {
        assert!(tokio::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Draining: not ready, while still healthy.
    admin.drain();
    assert_eq!(
        fetch(at("/readyz")).await,
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
    );
    assert_eq!(fetch(at("/healthz")).await.0, StatusCode::OK);
}

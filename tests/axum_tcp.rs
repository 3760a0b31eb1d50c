//! The layer inside a real axum server, over real TCP.

use axum::{extract::Path, routing::get, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tower_coalesce::{CoalesceConfig, CoalesceLayer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_axum_router_with_the_layer_queries_once_per_burst_over_tcp() {
    const N: usize = 200;
    let queries = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .outcome_header("x-coalesce"),
    );

    let (q, g) = (queries.clone(), gate.clone());
    let app = Router::new()
        .route(
            "/products/{id}",
            get(move |Path(id): Path<u32>| {
                let (q, g) = (q.clone(), g.clone());
                async move {
                    q.fetch_add(1, Ordering::SeqCst);
                    let _ = g.acquire().await.unwrap();
                    format!("{{\"id\":{id}}}")
                }
            }),
        )
        .layer(layer.clone());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let fetch = |path: String| {
        let client = client.clone();
        tokio::spawn(async move {
            let uri: http::Uri = format!("http://{addr}{path}").parse().unwrap();
            let res = client.get(uri).await.unwrap();
            let status = res.status();
            let outcome = res.headers()["x-coalesce"].to_str().unwrap().to_owned();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, outcome, body)
        })
    };

    let burst: Vec<_> = (0..N).map(|_| fetch("/products/7".into())).collect();
    let other = fetch("/products/8".into());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while layer.stats().followers < (N - 1) as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "burst never gathered: {:?}",
            layer.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gate.add_permits(1000);

    let mut leaders = 0;
    for t in burst {
        let (status, outcome, body) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, "{\"id\":7}");
        leaders += usize::from(outcome == "leader");
        assert!(outcome == "leader" || outcome == "follower", "{outcome}");
    }
    assert_eq!(leaders, 1);
    assert_eq!(other.await.unwrap().2, "{\"id\":8}");
    assert_eq!(queries.load(Ordering::SeqCst), 2, "one query per product");

    let (_, outcome, body) = fetch("/products/7".into()).await.unwrap();
    assert_eq!((outcome.as_str(), &body[..]), ("hit", &b"{\"id\":7}"[..]));
    assert_eq!(queries.load(Ordering::SeqCst), 2);
    assert_eq!(layer.flights_in_progress(), 0);
    server.abort();
}

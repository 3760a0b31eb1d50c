//! What a Redis URL can carry: credentials, and (with the `tls-native` or
//! `tls-rustls` feature) TLS.

mod support;

use std::time::Duration;
use support::redis::RedisServer;
use support::{body, echo_path, get, Origin};
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer, Outcome, RedisBackend};

/// Two instances on `url`: the second must be answered by the first's stored answer.
async fn shares_answers(url: &str) -> (u64, Option<Outcome>) {
    let origin = Origin::open();
    let mut outcome = None;
    let mut errors = 0;
    for _ in 0..2 {
        let backend = RedisBackend::connect(url).await.unwrap();
        let layer = CoalesceLayer::new(
            CoalesceConfig::new()
                .ttl(Duration::from_secs(60))
                .backend(backend),
        );
        let res = layer
            .layer(origin.serve(echo_path))
            .oneshot(get("/u"))
            .await
            .unwrap();
        outcome = res.extensions().get::<Outcome>().copied();
        assert_eq!(body(res).await.unwrap(), "/u");
        errors += layer.stats().backend_errors;
    }
    (errors, outcome)
}

#[tokio::test]
async fn credentials_in_the_url_are_used_and_wrong_ones_only_cost_the_cache() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let good = format!("redis://:s3cret@127.0.0.1:{}/", server.port);
    assert_eq!(shares_answers(&good).await, (0, Some(Outcome::Hit)));
    let user = format!("redis://default:s3cret@127.0.0.1:{}/", server.port);
    assert_eq!(shares_answers(&user).await, (0, Some(Outcome::Hit)));
    let bad = format!("redis://:wrong@127.0.0.1:{}/", server.port);
    let (errors, outcome) = shares_answers(&bad).await;
    assert!(errors > 0, "a refused login is counted");
    assert_eq!(
        outcome,
        Some(Outcome::Leader),
        "requests still succeed, uncached"
    );
}

#[cfg(any(feature = "tls-native", feature = "tls-rustls"))]
#[tokio::test]
async fn rediss_urls_speak_tls() {
    let dir = std::env::temp_dir().join(format!("tower-coalesce-tls-{}", std::process::id()));
    let (cert, key) = support::redis::tls::certificate(&dir);
    let tls_port = support::redis::free_port().to_string();
    let args = support::redis::tls::args(&tls_port, &cert, &key);
    let _server = RedisServer::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // The certificate is self-signed, so verification is off for this test only.
    let url = format!("rediss://127.0.0.1:{tls_port}/#insecure");
    assert_eq!(shares_answers(&url).await, (0, Some(Outcome::Hit)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cluster whose nodes speak TLS (`tls-cluster`: they give TLS clients
/// their TLS ports), reached through `rediss://` seed nodes.
#[cfg(any(feature = "tls-native", feature = "tls-rustls"))]
#[tokio::test]
async fn rediss_cluster_nodes_speak_tls() {
    let dir =
        std::env::temp_dir().join(format!("tower-coalesce-tls-cluster-{}", std::process::id()));
    let (cert, key) = support::redis::tls::certificate(&dir);
    let ports: Vec<String> = (0..3)
        .map(|_| support::redis::free_port().to_string())
        .collect();
    let cluster = support::redis::RedisCluster::start_custom(3, 0, Duration::from_secs(5), &|i| {
        let mut args = support::redis::tls::args(&ports[i], &cert, &key);
        args.extend(["--tls-cluster", "yes"].map(str::to_owned));
        args
    });
    // The certificate is self-signed, so verification is off for this test only.
    let seeds: Vec<String> = ports[..2]
        .iter()
        .map(|port| format!("rediss://127.0.0.1:{port}/#insecure"))
        .collect();
    let origin = Origin::open();
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let backend = RedisBackend::connect_cluster(seeds.clone()).await.unwrap();
        let layer = CoalesceLayer::new(
            CoalesceConfig::new()
                .ttl(Duration::from_secs(60))
                .backend(backend),
        );
        let res = layer
            .layer(origin.serve(echo_path))
            .oneshot(get("/tls"))
            .await
            .unwrap();
        outcomes.push(res.extensions().get::<Outcome>().copied());
        assert_eq!(body(res).await.unwrap(), "/tls");
        assert_eq!(layer.stats().backend_errors, 0);
    }
    assert_eq!(outcomes, [Some(Outcome::Leader), Some(Outcome::Hit)]);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

//! What a Redis URL can carry: credentials, and (with the `tls` feature) TLS.

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

#[cfg(feature = "tls")]
#[tokio::test]
async fn rediss_urls_speak_tls() {
    let dir = std::env::temp_dir().join(format!("tower-coalesce-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl command is needed for this test (scripts/test.sh installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let tls_port = support::redis::free_port().to_string();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let _server = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        cert,
        "--tls-key-file",
        key,
        "--tls-ca-cert-file",
        cert,
        "--tls-auth-clients",
        "no",
    ]);
    // The certificate is self-signed, so verification is off for this test only.
    let url = format!("rediss://127.0.0.1:{tls_port}/#insecure");
    assert_eq!(shares_answers(&url).await, (0, Some(Outcome::Hit)));
    let _ = std::fs::remove_dir_all(&dir);
}

//! An `https://` upstream, over real TCP and TLS: its certificate, issued
//! by a certificate authority the test makes, is verified against
//! `--upstream-ca`; ALPN settles on HTTP/2; a burst still costs one call;
//! and without that CA the certificate is refused (`502`), never trusted.

mod support;

use axum::extract::{Request, State};
use axum::routing;
use axum::Router;
use bytes::Bytes;
use http::{StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// A certificate authority's PEM, and a server configuration whose
/// certificate (for 127.0.0.1) it issued.
fn pki() -> (String, tokio_rustls::rustls::ServerConfig) {
    let ca = support::Ca::new();
    let leaf = ca.issue();
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(support::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf.key_der.into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (ca.pem, config)
}

/// An upstream speaking TLS on a loopback port: records each request's
/// version and answers `cacheable`.
async fn upstream(config: tokio_rustls::rustls::ServerConfig) -> (Uri, Arc<Mutex<Vec<Version>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route(
            "/r",
            routing::get(
                |State(seen): State<Arc<Mutex<Vec<Version>>>>, req: Request| async move {
                    seen.lock().unwrap().push(req.version());
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    ([("cache-control", "max-age=60")], "over tls")
                },
            ),
        )
        .with_state(seen.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A handshake the proxy refuses ends here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| app.clone().oneshot(req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (format!("https://{addr}").parse().unwrap(), seen)
}

async fn proxy(args: &[String]) -> SocketAddr {
    support::start(args).await.0
}

async fn get(addr: SocketAddr) -> (StatusCode, Bytes) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::get(format!("http://{addr}/r"))
        .body(Full::default())
        .unwrap();
    let res = client.request(req).await.unwrap();
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_verified_against_the_ca_given_and_spoken_to_in_http2() {
    let (ca, config) = pki();
    let dir = support::scratch("ca");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let (upstream, seen) = upstream(config).await;

    let trusting = proxy(&[
        "--upstream".into(),
        upstream.to_string(),
        "--upstream-ca".into(),
        ca_file.display().to_string(),
    ])
    .await;
    let burst: Vec<_> = (0..20).map(|_| tokio::spawn(get(trusting))).collect();
    for answer in burst {
        assert_eq!(
            answer.await.unwrap(),
            (StatusCode::OK, Bytes::from("over tls"))
        );
    }
    let versions = seen.lock().unwrap().clone();
    assert_eq!(versions, [Version::HTTP_2], "one call, by ALPN in HTTP/2");

    // The system's roots do not know the test's CA: refused, not trusted.
    let doubting = proxy(&["--upstream".into(), upstream.to_string()]).await;
    assert_eq!(get(doubting).await.0, StatusCode::BAD_GATEWAY);
    assert_eq!(seen.lock().unwrap().len(), 1);

    // A CA file that holds no certificate is an error at start.
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let args = coalesce_proxy::Args::parse(
        [
            "--upstream",
            &upstream.to_string(),
            "--upstream-ca",
            empty.to_str().unwrap(),
        ]
        .map(str::to_owned),
    )
    .unwrap();
    let refused = coalesce_proxy::build(&args).await.unwrap_err();
    assert!(refused.contains("no certificate"), "{refused}");
    let _ = std::fs::remove_dir_all(&dir);
}

//! TLS on the proxy's listener, over real TCP: HTTP/2 by ALPN and HTTP/1.1
//! on one port, a certificate reload that new connections see while open
//! ones carry on, a reload that fails keeping the certificate in use, and
//! bad files refused at start.

mod support;

use axum::routing;
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

async fn upstream() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = Router::new().route(
        "/r",
        routing::get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { ([("cache-control", "max-age=60")], "behind tls") }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (uri, calls)
}

/// A TLS connection to the proxy, trusting `ca` only and offering `alpn`:
/// the certificate the proxy presented, and the stream.
async fn connect(
    addr: SocketAddr,
    ca: &support::Ca,
    alpn: &[&[u8]],
) -> (
    CertificateDer<'static>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(ca.client_config(alpn)));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    (presented, tls)
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "shop.example")
        .body(Full::default())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_speaks_tls_and_reloads_its_certificate_without_dropping_connections() {
    let (upstream, calls) = upstream().await;
    let ca = support::Ca::new();
    let dir = support::scratch("listener");
    let first = ca.issue();
    let (cert, key) = support::write_leaf(&dir, &first);
    let (addr, _, tls) = support::start(&support::args(&[
        "--upstream",
        &upstream,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]))
    .await;
    let tls = tls.unwrap();

    // HTTP/2 by ALPN: a burst multiplexed on one connection, one call.
    let (presented, stream) = connect(addr, &ca, &[b"h2", b"http/1.1"]).await;
    assert_eq!(presented, first.der);
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let burst: Vec<_> = (0..10)
        .map(|_| tokio::spawn(h2.clone().send_request(get("/r"))))
        .collect();
    for res in burst {
        let res = res.await.unwrap().unwrap();
        assert_eq!(
            (res.status(), res.version()),
            (StatusCode::OK, Version::HTTP_2)
        );
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "behind tls");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // HTTP/1.1 on the same port, for a client that offers only it.
    let (_, stream) = connect(addr, &ca, &[b"http/1.1"]).await;
    let (mut h1, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let res = h1.send_request(get("/r")).await.unwrap();
    assert_eq!(
        (res.status(), res.version()),
        (StatusCode::OK, Version::HTTP_11)
    );
    assert_eq!(res.headers()["x-coalesce"], "hit");

    // A new certificate in the files, reloaded: new connections get it;
    // the connection open before goes on.
    let second = ca.issue();
    support::write_leaf(&dir, &second);
    tls.reload().unwrap();
    let (presented, _) = connect(addr, &ca, &[b"h2"]).await;
    assert_eq!(presented, second.der);
    let res = h2.clone().send_request(get("/r")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // A key that does not match the certificate: the reload fails, and the
    // certificate in use stays.
    std::fs::write(&key, ca.issue().key_pem).unwrap();
    let error = tls.reload().unwrap_err();
    assert!(error.contains("do not belong together"), "{error}");
    let (presented, _) = connect(addr, &ca, &[b"h2"]).await;
    assert_eq!(presented, second.der);

    // At start, the same mismatch, or a file with no certificate, is an
    // error that names the file.
    let refused = coalesce_proxy::Tls::from_files(&cert, &key).unwrap_err();
    assert!(refused.contains("do not belong together"), "{refused}");
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let refused = coalesce_proxy::Tls::from_files(&empty, &key).unwrap_err();
    assert!(refused.contains("empty.pem"), "{refused}");
    // A flag without its pair is refused by the command line.
    let alone = coalesce_proxy::Args::parse(["--upstream", &upstream, "--tls-cert", "c.pem"]);
    assert!(alone.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

//! Protocol upgrades (WebSocket and the like) over real TCP: the proxy
//! passes the handshake to the upstream with its `Upgrade`, and once the
//! upstream switches protocols it joins the two connections byte for byte;
//! each client gets a tunnel of its own (never a coalesced one); an upstream
//! that refuses is answered as it answered; a tunnel holds its connection's
//! place under `--max-connections` as long as it lasts.

mod support;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the upstream saw of each upgrade request: its `Connection` and
/// `Upgrade` fields.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// An upstream whose `/echo` switches to the `echo` protocol (every byte
/// sent back, until the client closes), and whose `/refuse` answers an
/// upgrade request with a plain `200`.
async fn upstream() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let noted = seen.clone();
    let app = Router::new()
        .route(
            "/echo",
            get(move |mut req: Request<Body>| {
                let noted = noted.clone();
                async move {
                    let field = |name| {
                        req.headers()
                            .get(name)
                            .map(|v: &http::HeaderValue| v.to_str().unwrap().to_owned())
                            .unwrap_or_default()
                    };
                    let pair = (field(header::CONNECTION), field(header::UPGRADE));
                    noted.lock().unwrap().push(pair);
                    let upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let mut io = TokioIo::new(upgrade.await.unwrap());
                        let mut buf = [0u8; 1024];
                        loop {
                            match io.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if io.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                    Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header(header::CONNECTION, "upgrade")
                        .header(header::UPGRADE, "echo")
                        .body(Body::empty())
                        .unwrap()
                }
            }),
        )
        .route("/refuse", get(|| async { "no upgrade here" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (uri, seen)
}

async fn proxy(upstream: &str, extra: &[&str]) -> SocketAddr {
    let mut args = vec!["--listen", "127.0.0.1:0", "--upstream", upstream];
    args.extend_from_slice(extra);
    support::start(&support::args(&args)).await.0
}

/// Sends an upgrade request for `path` and reads the answer's head (and
/// whatever body came with it in the same reads, up to `body` bytes).
async fn handshake(conn: &mut TcpStream, path: &str, body: usize) -> String {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut byte))
            .await
            .expect("no answer to the handshake")
            .unwrap();
        assert_eq!(n, 1, "closed before the end of the head: {got:?}");
        got.push(byte[0]);
    }
    let mut rest = vec![0u8; body];
    if body > 0 {
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut rest))
            .await
            .expect("no body")
            .unwrap();
    }
    got.extend_from_slice(&rest);
    String::from_utf8(got).unwrap().to_ascii_lowercase()
}

/// Writes `text` into the tunnel and reads the same number of bytes back.
async fn echo(conn: &mut TcpStream, text: &str) -> String {
    conn.write_all(text.as_bytes()).await.unwrap();
    let mut back = vec![0u8; text.len()];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut back))
        .await
        .expect("nothing came back through the tunnel")
        .unwrap();
    String::from_utf8(back).unwrap()
}

#[tokio::test]
async fn an_upgrade_is_tunnelled_both_ways_one_tunnel_per_client() {
    let (upstream, seen) = upstream().await;
    let addr = proxy(&upstream, &[]).await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    let (a, b) = tokio::join!(
        handshake(&mut first, "/echo", 0),
        handshake(&mut second, "/echo", 0)
    );
    for head in [&a, &b] {
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("\r\nupgrade: echo\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
        // The layer never saw it: no outcome header.
        assert!(!head.contains("x-coalesce"), "{head}");
    }
    // Each tunnel carries its own client's bytes, in both directions,
    // for as long as it is open.
    assert_eq!(echo(&mut first, "one's bytes").await, "one's bytes");
    assert_eq!(echo(&mut second, "the other's").await, "the other's");
    assert_eq!(echo(&mut first, "and again").await, "and again");
    // Two upgrades reached the upstream, each with the fields that ask it.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (connection, upgrade) in seen {
        assert!(connection.eq_ignore_ascii_case("upgrade"), "{connection}");
        assert_eq!(upgrade, "echo");
    }
}

#[tokio::test]
async fn an_upgrade_the_upstream_refuses_is_answered_as_it_answered() {
    let (upstream, _) = upstream().await;
    let addr = proxy(&upstream, &[]).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let answer = handshake(&mut conn, "/refuse", "no upgrade here".len()).await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.ends_with("no upgrade here"), "{answer}");
    assert!(!answer.contains("\r\nupgrade:"), "{answer}");
}

#[tokio::test]
async fn a_tunnel_keeps_its_connection_place_while_it_lasts() {
    let (upstream, _) = upstream().await;
    let addr = proxy(&upstream, &["--max-connections", "1"]).await;
    let mut tunnel = TcpStream::connect(addr).await.unwrap();
    assert!(handshake(&mut tunnel, "/echo", 0)
        .await
        .starts_with("http/1.1 101"));
    assert_eq!(echo(&mut tunnel, "held").await, "held");
    // The connection's own task is over once it is upgraded; the tunnel
    // still holds the place, so the next connection waits...
    let mut next = TcpStream::connect(addr).await.unwrap();
    next.write_all(b"GET /refuse HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let early = tokio::time::timeout(Duration::from_millis(300), next.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "served while the tunnel held the only place"
    );
    // ...until the tunnel closes.
    drop(tunnel);
    let n = tokio::time::timeout(Duration::from_secs(5), next.read(&mut buf))
        .await
        .expect("the waiting connection was never served")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
}

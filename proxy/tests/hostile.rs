//! Requests and deployments that try to make the proxy serve one origin's
//! or one variant's answer for another: each over real TCP, with upstreams
//! that are plain sockets answering what they were asked.

mod support;

use bytes::Bytes;
use coalesce_test_redis::RedisServer;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request head as an upstream received it: header names in lower case.
type Head = Vec<(String, String)>;

/// The value of the header `name` in `head`, or `-`.
fn header<'a>(head: &'a Head, name: &str) -> &'a str {
    head.iter()
        .find(|(n, _)| n == name)
        .map_or("-", |(_, v)| v.as_str())
}

/// An upstream on a loopback port of its own: one request per connection,
/// answered `200` with the body `answer` makes of the request's head, kept
/// a minute (`Cache-Control: max-age=60`), varying on `Accept-Language`
/// (which `language` answers by). Returns its URL and how many
/// requests it has answered.
async fn upstream(answer: fn(&Head) -> String) -> (Uri, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let calls = counted.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                calls.fetch_add(1, Ordering::SeqCst);
                let body = answer(&parse_head(&head));
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\n\
                     vary: accept-language\r\n\
                     content-type: text/plain\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (uri.parse().unwrap(), calls)
}

/// Reads up to the end of a message head; `None` if the peer closed first.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// The header lines of a head (the start line skipped).
fn parse_head(head: &str) -> Head {
    head.split("\r\n")
        .skip(1)
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

/// Starts the proxy the command line `args` describes in front of
/// `upstream`; returns its address.
async fn proxy(upstream: &Uri, args: &[&str]) -> SocketAddr {
    let argv = ["--upstream".to_owned(), upstream.to_string()]
        .into_iter()
        .chain(args.iter().map(|a| a.to_string()));
    let argv: Vec<String> = argv.collect();
    support::start(&argv).await.0
}

/// What the proxy answered: status, outcome header and body.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    outcome: String,
    body: String,
}

/// A `GET` of `path` through the proxy at `addr`, with `headers`; bounded.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let exchange = async {
        let res = client.request(req.body(Full::default()).unwrap()).await;
        let (head, body) = res.unwrap().into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: head.status,
            outcome: head
                .headers
                .get("x-coalesce")
                .map_or("<none>".into(), |v| v.to_str().unwrap().to_owned()),
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("no answer within 20 s")
}

/// Answers with the name of the upstream: which one answered shows in the
/// body.
fn upstream_a(_: &Head) -> String {
    "upstream a".to_owned()
}

/// The other upstream.
fn upstream_b(_: &Head) -> String {
    "upstream b".to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_of_different_upstreams_on_one_redis_under_one_public_host_serve_their_own_pages() {
    let redis = RedisServer::start();
    let url = redis.url();
    let args = ["--redis", &url, "--public-host", "shop.example"];
    let (a, a_calls) = upstream(upstream_a).await;
    let (b, b_calls) = upstream(upstream_b).await;
    let (to_a, to_b) = (proxy(&a, &args).await, proxy(&b, &args).await);

    let first = get(to_a, "/page", &[]).await;
    assert_eq!(
        (first.status, first.outcome.as_str(), first.body.as_str()),
        (StatusCode::OK, "leader", "upstream a")
    );
    let other = get(to_b, "/page", &[]).await;
    assert_eq!(other.body, "upstream b", "{other:?}");
    assert_eq!(other.outcome, "leader");
    // Each proxy still shares with itself.
    assert_eq!(get(to_a, "/page", &[]).await.body, "upstream a");
    assert_eq!(get(to_b, "/page", &[]).await.body, "upstream b");
    assert_eq!(a_calls.load(Ordering::SeqCst), 1);
    assert_eq!(b_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_of_different_upstreams_on_one_redis_reached_by_one_host_serve_their_own_pages() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (a, _) = upstream(upstream_a).await;
    let (b, _) = upstream(upstream_b).await;
    let to_a = proxy(&a, &["--redis", &url]).await;
    let to_b = proxy(&b, &["--redis", &url]).await;
    // One name for both, as behind a balancer that routes by path.
    let host = [("host", "shop.example")];

    assert_eq!(get(to_a, "/page", &host).await.body, "upstream a");
    let other = get(to_b, "/page", &host).await;
    assert_eq!(
        (other.outcome.as_str(), other.body.as_str()),
        ("leader", "upstream b")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_in_different_namespaces_share_nothing_and_each_writes_under_its_own() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (a, a_calls) = upstream(upstream_a).await;
    let shared = ["--redis", &url, "--public-host", "shop.example"];
    let in_ns = |ns: &'static str| {
        let mut args = shared.to_vec();
        args.extend(["--namespace", ns]);
        args
    };
    let one = proxy(&a, &in_ns("shop-one")).await;
    let two = proxy(&a, &in_ns("shop-two")).await;
    let also_one = proxy(&a, &in_ns("shop-one")).await;

    assert_eq!(get(one, "/page", &[]).await.outcome, "leader");
    assert_eq!(get(two, "/page", &[]).await.outcome, "leader");
    assert_eq!(get(also_one, "/page", &[]).await.outcome, "hit");
    assert_eq!(a_calls.load(Ordering::SeqCst), 2);

    let mut conn = redis.conn();
    let mut names = |pattern: &str| -> Vec<String> {
        redis::cmd("KEYS").arg(pattern).query(&mut conn).unwrap()
    };
    let (mine, theirs, default) = (
        names("shop-one:*"),
        names("shop-two:*"),
        names("coalesce:*"),
    );
    assert!(
        !mine.is_empty() && !theirs.is_empty(),
        "{mine:?} {theirs:?}"
    );
    assert!(default.is_empty(), "{default:?}");

    // A namespace means nothing without a Redis, and must be one.
    let parse = |args: &[&str]| {
        let argv = ["--upstream", "http://h:1"].iter().chain(args);
        coalesce_proxy::Args::parse(argv.copied())
    };
    let redis_url = "redis://127.0.0.1:6379/";
    assert!(parse(&["--namespace", "shop"]).is_err());
    assert!(parse(&["--redis", redis_url, "--namespace", ""]).is_err());
    assert!(parse(&["--redis", redis_url, "--namespace", "a{b}"]).is_err());
    let ok = parse(&["--redis-cluster", redis_url, "--namespace", "shop"]).unwrap();
    assert_eq!(ok.namespace.as_deref(), Some("shop"));
    assert_eq!(parse(&["--redis", redis_url]).unwrap().namespace, None);
}

/// Answers with the `Accept-Language` it received.
fn language(head: &Head) -> String {
    format!("language {}", header(head, "accept-language"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_header_named_by_connection_is_removed_before_the_request_is_keyed() {
    let (up, _) = upstream(language).await;
    let addr = proxy(&up, &[]).await;
    // `Connection` makes `Accept-Language` hop-by-hop: the upstream never
    // sees it, so the answer it makes is not the `fr` one.
    let hidden = [("accept-language", "fr"), ("connection", "accept-language")];
    let first = get(addr, "/page", &hidden).await;
    assert_eq!(first.body, "language -");

    let french = get(addr, "/page", &[("accept-language", "fr")]).await;
    assert_eq!(
        (french.outcome.as_str(), french.body.as_str()),
        ("leader", "language fr"),
        "a plain `fr` request got the answer made without Accept-Language"
    );
    // The answer made without the header is the one for requests without it.
    let plain = get(addr, "/page", &[]).await;
    assert_eq!(
        (plain.outcome.as_str(), plain.body.as_str()),
        ("hit", "language -")
    );
}

/// Answers with the host the upstream was told the client asked for.
fn forwarded_host(head: &Head) -> String {
    format!("made for {}", header(head, "x-forwarded-host"))
}

/// Sends `GET <target> HTTP/1.1` with `Host: <host>` on a connection of its
/// own, as no HTTP client library does for a reverse proxy; returns the
/// answer's outcome header and body.
async fn raw_get(addr: SocketAddr, target: &str, host: &str) -> (String, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        String::from_utf8(raw).unwrap()
    };
    let raw = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("no answer within 20 s");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a whole head");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let head = parse_head(head);
    let body = if header(&head, "transfer-encoding") == "chunked" {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (header(&head, "x-coalesce").to_owned(), body)
}

/// The content of a chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size");
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_targets_authority_replaces_host_for_the_key_and_the_upstream() {
    let (up, calls) = upstream(forwarded_host).await;
    let addr = proxy(&up, &[]).await;

    let (outcome, body) = raw_get(addr, "http://victim.example/x", "evil.example").await;
    assert_eq!(
        (outcome.as_str(), body.as_str()),
        ("leader", "made for victim.example"),
        "the upstream was told another host than the one keyed"
    );
    // Every way of naming victim.example gets the answer made for it.
    for (target, host) in [
        ("http://victim.example/x", "victim.example"),
        ("/x", "victim.example"),
    ] {
        let (outcome, body) = raw_get(addr, target, host).await;
        assert_eq!(body, "made for victim.example", "{target} with Host {host}");
        assert_eq!(outcome, "hit", "{target} with Host {host}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The host the client named alone is its own.
    let (_, evil) = raw_get(addr, "/x", "evil.example").await;
    assert_eq!(evil, "made for evil.example");
}

/// An upstream that answers `GET`s with `hello` (kept a minute), `POST`s
/// `204`, and never answers a request carrying `Authorization`, nor one
/// for `/hang`.
async fn hanging_upstream() -> Uri {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                let hangs = head.starts_with("GET /hang ");
                if hangs || header(&parse_head(&head), "authorization") != "-" {
                    // Holds the connection, answers nothing.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                let response = if head.starts_with("POST") {
                    "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_owned()
                } else {
                    "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 5\r\n\
                     connection: close\r\n\r\nhello"
                        .to_owned()
                };
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    uri.parse().unwrap()
}

#[tokio::test]
async fn an_upstream_that_never_answers_an_uncoalesced_request_gets_it_a_504() {
    let upstream = hanging_upstream().await;
    let addr = proxy(&upstream, &["--upstream-timeout-ms", "300"]).await;
    let start = std::time::Instant::now();
    let answer = get(addr, "/me", &[("authorization", "Bearer 1")]).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.outcome, "bypass");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_upstream_that_never_answers_a_coalesced_burst_gets_every_caller_a_504() {
    let upstream = hanging_upstream().await;
    let addr = proxy(&upstream, &["--upstream-timeout-ms", "300"]).await;
    let start = std::time::Instant::now();
    let burst: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { get(addr, "/hang", &[]).await }))
        .collect();
    for answer in burst {
        let answer = answer.await.unwrap();
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{answer:?}");
        assert!(["leader", "follower"].contains(&answer.outcome.as_str()));
    }
    // Bounded by the upstream timeout, not by the flight's 30 s.
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// A `POST` of `path` through the proxy at `addr`: its status.
async fn post(addr: SocketAddr, path: &str) -> StatusCode {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::post(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap();
    client.request(req).await.unwrap().status()
}

#[tokio::test]
async fn unsafe_requests_purge_their_url_unless_told_not_to() {
    let upstream = hanging_upstream().await;
    for (args, after_write) in [
        (&[][..], "leader"),
        (&["--no-invalidate-on-unsafe"][..], "hit"),
    ] {
        let addr = proxy(&upstream, args).await;
        assert_eq!(get(addr, "/w", &[]).await.outcome, "leader");
        assert_eq!(get(addr, "/w", &[]).await.outcome, "hit");
        assert_eq!(post(addr, "/w").await, StatusCode::NO_CONTENT);
        assert_eq!(get(addr, "/w", &[]).await.outcome, after_write, "{args:?}");
    }
}

#[test]
fn turning_invalidation_off_says_it_breaks_a_must_of_rfc_9111() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_coalesce-proxy"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).replace('\n', " ");
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        help.contains("--no-invalidate-on-unsafe") && help.contains("MUST of RFC 9111 §4.4"),
        "{help}"
    );
}

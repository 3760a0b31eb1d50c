//! The proxy over real TCP: a counting axum upstream, the proxy in
//! front of it, and a hyper client in front of the proxy.

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{self, any};
use axum::Router;
use bytes::Bytes;
use coalesce_proxy::ProxyLayer;
use coalesce_test_redis::RedisServer;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

const SLOW_ANSWER: &str = "the slow answer";
const CHUNK: usize = 64 * 1024;
const BIG_CHUNKS: usize = 64; // 4 MiB, four times the layer's 1 MiB limit
const BIG_PAUSE_AT: usize = 32; // the upstream waits after 2 MiB

/// The upstream: counts calls per route, and holds some answers until the
/// test opens a gate.
#[derive(Clone)]
struct Upstream {
    calls: Arc<Mutex<HashMap<&'static str, usize>>>,
    /// `/slow` answers once this is open.
    slow_gate: Arc<Semaphore>,
    /// Each `/big` answer takes one permit half-way through its body.
    big_gate: Arc<Semaphore>,
    /// The request headers `/hop` received.
    seen: Arc<Mutex<Option<HeaderMap>>>,
}

impl Upstream {
    fn new() -> Self {
        Self {
            calls: Arc::default(),
            slow_gate: Arc::new(Semaphore::new(0)),
            big_gate: Arc::new(Semaphore::new(0)),
            seen: Arc::default(),
        }
    }

    fn count(&self, route: &'static str) -> usize {
        let mut calls = self.calls.lock().unwrap();
        let n = calls.entry(route).or_default();
        *n += 1;
        *n
    }

    fn calls(&self, route: &str) -> usize {
        self.calls.lock().unwrap().get(route).copied().unwrap_or(0)
    }

    fn open_slow_gate(&self) {
        self.slow_gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

fn big_chunk(i: usize) -> Bytes {
    Bytes::from(vec![(i % 251) as u8; CHUNK])
}

fn big_body() -> Vec<u8> {
    (0..BIG_CHUNKS)
        .flat_map(|i| big_chunk(i).to_vec())
        .collect()
}

async fn slow(State(up): State<Upstream>) -> &'static str {
    up.count("slow");
    let _permit = up.slow_gate.acquire().await.unwrap();
    SLOW_ANSWER
}

async fn echo(State(up): State<Upstream>, method: Method, body: Bytes) -> impl IntoResponse {
    up.count("echo");
    (
        StatusCode::CREATED,
        [("x-method", method.to_string())],
        body,
    )
}

async fn big(State(up): State<Upstream>, headers: HeaderMap) -> Body {
    up.count("big");
    *up.seen.lock().unwrap() = Some(headers);
    let chunks = futures_util::stream::unfold(0, move |i| {
        let gate = up.big_gate.clone();
        async move {
            if i == BIG_CHUNKS {
                return None;
            }
            if i == BIG_PAUSE_AT {
                gate.acquire().await.unwrap().forget();
            }
            Some((Ok::<_, std::io::Error>(big_chunk(i)), i + 1))
        }
    });
    Body::from_stream(chunks)
}

async fn cookie(State(up): State<Upstream>) -> impl IntoResponse {
    let n = up.count("cookie");
    // Slow enough for requests to meet while a call is under way.
    tokio::time::sleep(Duration::from_millis(50)).await;
    ([("set-cookie", format!("sid={n}"))], "personal")
}

async fn hop(State(up): State<Upstream>, headers: HeaderMap) -> impl IntoResponse {
    up.count("hop");
    *up.seen.lock().unwrap() = Some(headers);
    (
        [
            ("connection", "x-private-hop"),
            ("x-private-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic realm=\"upstream\""),
            ("x-end-to-end", "yes"),
        ],
        "hop",
    )
}

/// Answers with the `Cache-Control` its query names (`/fresh?max-age=60`).
async fn fresh(State(up): State<Upstream>, uri: Uri) -> impl IntoResponse {
    up.count("fresh");
    let cc = uri.query().unwrap_or("").replace("%20", " ");
    ([("cache-control", cc)], "fresh")
}

/// Kept a minute by its `Cache-Control`, with the `CDN-Cache-Control` its
/// query names (`/targeted?private`).
async fn targeted(State(up): State<Upstream>, uri: Uri) -> impl IntoResponse {
    up.count("targeted");
    let cdn = uri.query().unwrap_or("").replace("%20", " ");
    (
        [
            ("cache-control", "max-age=60".to_owned()),
            ("cdn-cache-control", cdn),
        ],
        "targeted",
    )
}

/// Kept a minute; its body is the `Accept-Encoding` it was asked with, and
/// with `?vary` it says `Vary: Accept-Encoding`.
async fn by_encoding(
    State(up): State<Upstream>,
    uri: Uri,
    headers: HeaderMap,
) -> impl IntoResponse {
    up.count("by-encoding");
    let asked = headers
        .get("accept-encoding")
        .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned());
    let mut res = ([("cache-control", "max-age=60")], asked).into_response();
    if uri.query() == Some("vary") {
        res.headers_mut()
            .insert("vary", http::HeaderValue::from_static("accept-encoding"));
    }
    res
}

/// Kept one second and never served stale, with an `ETag`: a request that
/// asks for it with that tag gets `304` and no body.
async fn must(State(up): State<Upstream>, headers: HeaderMap) -> impl IntoResponse {
    let conditional = headers
        .get("if-none-match")
        .is_some_and(|tag| tag == "\"m1\"");
    up.count(if conditional { "must-304" } else { "must-200" });
    let head = [
        ("etag", "\"m1\""),
        ("cache-control", "max-age=1, must-revalidate"),
    ];
    if conditional {
        (StatusCode::NOT_MODIFIED, head, String::new())
    } else {
        (StatusCode::OK, head, "must".repeat(1000))
    }
}

/// Kept one second, with an `ETag` (a conditional request for it gets
/// `304`); it may be served stale.
async fn brief(State(up): State<Upstream>, headers: HeaderMap) -> impl IntoResponse {
    let conditional = headers
        .get("if-none-match")
        .is_some_and(|tag| tag == "\"b1\"");
    up.count(if conditional {
        "brief-304"
    } else {
        "brief-200"
    });
    let head = [("etag", "\"b1\""), ("cache-control", "max-age=1")];
    if conditional {
        (StatusCode::NOT_MODIFIED, head, "")
    } else {
        (StatusCode::OK, head, "brief")
    }
}

/// Fresh for a minute by its `Expires`, written as some servers do: a
/// weekday that does not match the date, the month in capitals.
async fn dated(State(up): State<Upstream>) -> impl IntoResponse {
    up.count("dated");
    let now = std::time::SystemTime::now();
    let expires = httpdate::fmt_http_date(now + Duration::from_secs(60));
    let wrong = if expires.starts_with("Mon") {
        "Tue"
    } else {
        "Mon"
    };
    let month = expires[8..11].to_ascii_uppercase();
    let expires = format!("{wrong}{}{month}{}", &expires[3..8], &expires[11..]);
    (
        [("date", httpdate::fmt_http_date(now)), ("expires", expires)],
        "dated",
    )
}

/// `503 Service Unavailable`, with the `Cache-Control` its query names.
async fn unavailable(State(up): State<Upstream>, uri: Uri) -> impl IntoResponse {
    up.count("unavailable");
    let cc = uri.query().unwrap_or("").replace("%20", " ");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("cache-control", cc)],
        "down",
    )
}

/// Kept a minute, tagged `t1` and `t2`; its body counts its calls.
async fn tagged(State(up): State<Upstream>) -> impl IntoResponse {
    let n = up.count("tagged");
    (
        [("cache-control", "max-age=60"), ("surrogate-key", "t1 t2")],
        format!("tagged {n}"),
    )
}

const PAGE: &str = "0123456789";

/// A page with validators, kept for a minute; slow enough for a burst to
/// gather behind it.
async fn page(State(up): State<Upstream>, headers: HeaderMap) -> impl IntoResponse {
    up.count("page");
    *up.seen.lock().unwrap() = Some(headers);
    tokio::time::sleep(Duration::from_millis(100)).await;
    (
        [
            ("etag", "\"v1\""),
            ("cache-control", "max-age=60"),
            ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
        ],
        PAGE,
    )
}

/// Builds its answer from the forwarding headers it received, the way an
/// app that makes absolute links from `X-Forwarded-Host` does.
async fn whoami(State(up): State<Upstream>, headers: HeaderMap) -> impl IntoResponse {
    up.count("whoami");
    let get = |name: &str| {
        headers
            .get(name)
            .map_or("-", |v| v.to_str().unwrap())
            .to_owned()
    };
    format!(
        "host={} for={} proto={}",
        get("x-forwarded-host"),
        get("x-forwarded-for"),
        get("x-forwarded-proto")
    )
}

/// Starts the upstream on a loopback port.
async fn upstream() -> (Upstream, Uri) {
    let up = Upstream::new();
    let app = Router::new()
        .route("/slow", routing::get(slow))
        .route("/echo", any(echo))
        .route("/big", routing::get(big))
        .route("/cookie", routing::get(cookie))
        .route("/hop", routing::get(hop))
        .route("/page", routing::get(page))
        .route("/whoami", routing::get(whoami))
        .route("/fresh", routing::get(fresh))
        .route("/unavailable", routing::get(unavailable))
        .route("/targeted", routing::get(targeted))
        .route("/by-encoding", routing::get(by_encoding))
        .route("/must", routing::get(must))
        .route("/brief", routing::get(brief))
        .route("/dated", routing::get(dated))
        .route("/tagged", any(tagged))
        .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
        .with_state(up.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (up, uri.parse().unwrap())
}

/// Starts a proxy to `upstream` through `layer`, with the default handling
/// of forwarding headers; returns its address.
async fn start_proxy(upstream: &Uri, layer: ProxyLayer) -> SocketAddr {
    start(upstream, coalesce_proxy::Forwarding::default(), layer).await
}

async fn start(
    upstream: &Uri,
    forwarding: coalesce_proxy::Forwarding,
    layer: ProxyLayer,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = coalesce_proxy::proxy_service(upstream.clone(), forwarding, layer).unwrap();
    tokio::spawn(coalesce_proxy::serve(listener, svc, std::future::pending()));
    addr
}

fn args_from(upstream: &Uri, args: &[&str]) -> coalesce_proxy::Args {
    let argv = ["--upstream".to_owned(), upstream.to_string()]
        .into_iter()
        .chain(args.iter().map(|a| a.to_string()));
    coalesce_proxy::Args::parse(argv).unwrap()
}

/// The layer the command line `args` (after `--upstream`) would build; for
/// [`start_proxy`], so without forwarding flags.
async fn layer_from(upstream: &Uri, args: &[&str]) -> ProxyLayer {
    let args = args_from(upstream, args);
    assert!(args.forwarding.public_host.is_none() && !args.forwarding.trust);
    coalesce_proxy::layer(&args).await.unwrap()
}

/// Starts the proxy the command line `args` (after `--upstream`) describes.
async fn proxy_from(upstream: &Uri, args: &[&str]) -> (SocketAddr, ProxyLayer) {
    let args = args_from(upstream, args);
    let layer = coalesce_proxy::layer(&args).await.unwrap();
    (
        start(upstream, args.forwarding.clone(), layer.clone()).await,
        layer,
    )
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn outcome(&self) -> &str {
        self.headers
            .get("x-coalesce")
            .map_or("<none>", |v| v.to_str().unwrap())
    }
}

/// Sends `req`, bounded so that a hang fails the test instead of stalling it.
async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Answer {
    let exchange = async {
        let res = client.request(req).await.unwrap();
        let (head, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: head.status,
            headers: head.headers,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("no answer within 20 s")
}

fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap()
}

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_identical_gets_costs_the_upstream_one_call() {
    const N: usize = 200;
    let (up, upstream) = upstream().await;
    let layer = layer_from(&upstream, &[]).await;
    let addr = start_proxy(&upstream, layer.clone()).await;
    let client = client();

    let burst: Vec<_> = (0..N)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { send(&client, get(addr, "/slow")).await })
        })
        .collect();
    until("the burst to gather behind one call", || {
        layer.stats().followers == (N - 1) as u64 && up.calls("slow") == 1
    })
    .await;
    up.open_slow_gate();

    let mut outcomes = HashMap::<String, usize>::new();
    for task in burst {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, SLOW_ANSWER);
        *outcomes.entry(answer.outcome().to_owned()).or_default() += 1;
    }
    assert_eq!(up.calls("slow"), 1);
    assert_eq!(outcomes.get("leader"), Some(&1), "{outcomes:?}");
    assert_eq!(outcomes.get("follower"), Some(&(N - 1)), "{outcomes:?}");
    assert_eq!(layer.flights_in_progress(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_and_their_bodies_pass_through_untouched() {
    let (up, upstream) = upstream().await;
    let addr = start_proxy(&upstream, layer_from(&upstream, &[]).await).await;
    let client = client();
    // Above the layer's 1 MiB: request bodies are never its business.
    let payload: Bytes = (0..3 * 1024 * 1024)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<_>>()
        .into();

    let posts: Vec<_> = (0..3)
        .map(|_| {
            let (client, payload) = (client.clone(), payload.clone());
            tokio::spawn(async move {
                let req = Request::post(format!("http://{addr}/echo"))
                    .body(Full::new(payload))
                    .unwrap();
                send(&client, req).await
            })
        })
        .collect();
    for post in posts {
        let answer = post.await.unwrap();
        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(answer.headers["x-method"], "POST");
        assert_eq!(answer.outcome(), "bypass");
        assert!(answer.body == payload, "the echo differs from the request");
    }
    assert_eq!(up.calls("echo"), 3, "each POST reaches the upstream");

    let put = Request::put(format!("http://{addr}/echo"))
        .body(Full::from("small"))
        .unwrap();
    let answer = send(&client, put).await;
    assert_eq!(
        (answer.status, answer.outcome(), &answer.body[..]),
        (StatusCode::CREATED, "bypass", &b"small"[..])
    );
    assert_eq!(answer.headers["x-method"], "PUT");
    assert_eq!(up.calls("echo"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stop_at_the_proxy_and_end_to_end_ones_pass() {
    let (up, upstream) = upstream().await;
    let addr = start_proxy(&upstream, layer_from(&upstream, &[]).await).await;
    let req = Request::get(format!("http://{addr}/hop"))
        .header("connection", "x-client-hop")
        .header("x-client-hop", "1")
        .header("te", "trailers")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("proxy-authorization", "Basic cHJveHk6c2VjcmV0")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-end-to-end", "kept")
        .body(Full::default())
        .unwrap();
    let answer = send(&client(), req).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "hop");

    let seen = up
        .seen
        .lock()
        .unwrap()
        .clone()
        .expect("the upstream was called");
    for name in [
        "connection",
        "x-client-hop",
        "te",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(
            !seen.contains_key(name),
            "upstream received {name}: {seen:?}"
        );
    }
    assert_eq!(seen["x-end-to-end"], "kept");
    assert_eq!(seen["via"], "1.1 tower-coalesce");
    // The client's own `X-Forwarded-For` is dropped (anyone can send one),
    // and the request leads a flight, so it carries no client address.
    assert!(!seen.contains_key("x-forwarded-for"), "{seen:?}");
    assert_eq!(seen["host"], upstream.authority().unwrap().as_str());
    assert_eq!(seen["x-forwarded-host"], addr.to_string().as_str());

    for name in [
        "connection",
        "x-private-hop",
        "keep-alive",
        "proxy-authenticate",
    ] {
        assert!(
            !answer.headers.contains_key(name),
            "client received {name}: {:?}",
            answer.headers
        );
    }
    assert_eq!(answer.headers["x-end-to-end"], "yes");
    assert_eq!(
        answer.outcome(),
        "leader",
        "Proxy-Authorization is this proxy's, removed before the request is \
         keyed: it does not make the answer private"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_stored_size_streams_through_whole_to_every_caller() {
    let (up, upstream) = upstream().await;
    let layer = layer_from(&upstream, &[]).await;
    let addr = start_proxy(&upstream, layer.clone()).await;
    let client = client();
    let expected = big_body();

    // The upstream stops half-way until the client holds that half: a proxy
    // that buffered the body before answering would never get there.
    let res = tokio::time::timeout(Duration::from_secs(20), async {
        let res = client.request(get(addr, "/big")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-coalesce"], "leader");
        let mut body = res.into_body();
        let mut received = Vec::new();
        while received.len() < BIG_PAUSE_AT * CHUNK {
            let frame = body.frame().await.expect("body ended early").unwrap();
            if let Ok(data) = frame.into_data() {
                received.extend_from_slice(&data);
            }
        }
        up.big_gate.add_permits(1);
        received.extend_from_slice(&body.collect().await.unwrap().to_bytes());
        received
    })
    .await
    .expect("the first half never arrived: the body was not streamed");
    assert!(res == expected, "body of {} bytes differs", res.len());

    // Concurrent requests for it share one stream, each from its first byte.
    up.big_gate.add_permits(3);
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { send(&client, get(addr, "/big")).await })
        })
        .collect();
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            ["leader", "follower"].contains(&answer.outcome()),
            "{}",
            answer.outcome()
        );
        assert!(
            answer.body == expected,
            "a body of {} bytes differs",
            answer.body.len()
        );
    }
    // Not stored, and not remembered as pass-through: each later burst is
    // one flight (here, up to one per request, as they may not meet).
    assert!((2..=4).contains(&up.calls("big")), "{}", up.calls("big"));
    assert_eq!(layer.flights_in_progress(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stored_bytes_raises_the_size_of_the_answers_kept() {
    let (up, upstream) = upstream().await;
    up.big_gate.add_permits(10);
    let client = client();
    let expected = big_body();
    let flags = ["--ttl-ms", "60000", "--max-stored-bytes", "8388608"];
    let (proxy, _layer) = proxy_from(&upstream, &flags).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let answer = send(&client, get(proxy, "/big")).await;
        assert!(
            answer.body == expected,
            "a body of {} bytes differs",
            answer.body.len()
        );
        seen.push(answer.outcome().to_owned());
    }
    assert_eq!(seen, ["leader", "hit"], "4 MiB kept under an 8 MiB bound");
    assert_eq!(up.calls("big"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_set_cookie_is_never_shared() {
    const N: usize = 20;
    let (up, upstream) = upstream().await;
    let layer = layer_from(&upstream, &["--ttl-ms", "60000"]).await;
    let addr = start_proxy(&upstream, layer.clone()).await;
    let client = client();

    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { send(&client, get(addr, "/cookie")).await })
        })
        .collect();
    let mut cookies = HashSet::new();
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            ["leader", "pass"].contains(&answer.outcome()),
            "a personal answer went out as {}",
            answer.outcome()
        );
        cookies.insert(answer.headers["set-cookie"].clone());
    }
    assert_eq!(cookies.len(), N, "every client got a cookie of its own");
    assert_eq!(up.calls("cookie"), N);
    assert_eq!(layer.stats().stored, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_502_not_a_hang() {
    // A port that was free a moment ago, with nothing listening now.
    let port = coalesce_test_redis::free_port();
    let upstream: Uri = format!("http://127.0.0.1:{port}").parse().unwrap();
    let addr = start_proxy(&upstream, layer_from(&upstream, &[]).await).await;
    let client = client();

    let burst: Vec<_> = (0..10)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { send(&client, get(addr, "/anything")).await })
        })
        .collect();
    for task in burst {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        assert!(!answer.body.is_empty());
    }
    let post = Request::post(format!("http://{addr}/echo"))
        .body(Full::from("lost"))
        .unwrap();
    let answer = send(&client, post).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.outcome(), "bypass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_status_header_can_be_renamed_or_turned_off() {
    let (_up, upstream) = upstream().await;
    let client = client();

    let silent = start_proxy(&upstream, layer_from(&upstream, &["--no-header"]).await).await;
    for path in ["/hop", "/hop", "/cookie"] {
        let answer = send(&client, get(silent, path)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(!answer.headers.contains_key("x-coalesce"), "{path}");
    }

    let renamed = layer_from(&upstream, &["--header", "X-Cache-Status"]).await;
    let renamed = start_proxy(&upstream, renamed).await;
    let answer = send(&client, get(renamed, "/hop")).await;
    assert_eq!(answer.headers["x-cache-status"], "leader");
    assert!(!answer.headers.contains_key("x-coalesce"));
}

#[test]
fn the_command_line_is_checked() {
    let parse = |args: &[&str]| coalesce_proxy::Args::parse(args.iter().copied());
    let args = parse(&["--upstream", "http://127.0.0.1:3000"]).unwrap();
    assert_eq!(args.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(args.ttl, None, "freshness from the upstream by default");
    assert_eq!(args.default_ttl, Duration::ZERO);
    assert_eq!(args.max_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(args.stale, Duration::from_secs(3600));
    assert_eq!(args.header.as_ref().map(|h| h.as_str()), Some("x-coalesce"));
    assert_eq!(args.redis, None);
    assert!(args.redis_cluster.is_empty() && !args.shares());
    assert_eq!(args.lease, None);
    assert_eq!(args.early_refresh, 0.0);
    assert_eq!(args.purge_token, None, "no PURGE entry point by default");
    assert_eq!(
        args.tag_header.as_ref().map(|h| h.as_str()),
        Some("surrogate-key")
    );

    let cluster = parse(&[
        "--upstream",
        "http://h:1",
        "--redis-cluster",
        "redis://10.0.0.1:6379/,redis://u:secret@10.0.0.2:6379/",
    ])
    .unwrap();
    assert_eq!(
        cluster.redis_cluster,
        ["redis://10.0.0.1:6379/", "redis://u:secret@10.0.0.2:6379/"]
    );
    assert!(cluster.shares());
    assert!(!cluster.redis_shown().contains("secret"));
    let both = parse(&[
        "--upstream",
        "http://h:1",
        "--redis",
        "redis://a/",
        "--redis-cluster",
        "redis://b/",
    ]);
    assert!(both.unwrap_err().contains("cannot be used with"));

    let args = parse(&[
        "--listen",
        "0.0.0.0:9000",
        "--upstream",
        "http://backend:3000/",
        "--redis",
        "redis://127.0.0.1:6379/",
        "--ttl-ms",
        "1500",
        "--lease-ms",
        "2000",
        "--no-header",
        "--early-refresh",
        "1.5",
    ])
    .unwrap();
    assert_eq!(args.early_refresh, 1.5);
    assert_eq!(args.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(args.lease, Some(Duration::from_secs(2)));
    assert_eq!(args.ttl, Some(Duration::from_millis(1500)));
    assert_eq!(args.header, None);
    assert_eq!(args.redis.as_deref(), Some("redis://127.0.0.1:6379/"));

    for bad in [
        &[][..],
        &["--listen", "127.0.0.1:1"],
        &["--upstream"],
        &["--upstream", "ftp://127.0.0.1:3000"],
        &["--upstream", "127.0.0.1:3000"],
        &["--upstream", "http://127.0.0.1:3000/api"],
        &["--upstream", "http://127.0.0.1:3000", "--ttl-ms", "soon"],
        &["--upstream", "http://127.0.0.1:3000", "--lease-ms", "-1"],
        &[
            "--upstream",
            "http://127.0.0.1:3000",
            "--header",
            "bad header",
        ],
        &["--upstream", "http://h:1", "--header", "x-a", "--no-header"],
        &["--upstream", "http://h:1", "--verbose"],
        &["--upstream", "http://h:1", "--public-host", "a b"],
        &["--upstream", "http://h:1", "--public-host", "user@h"],
        &["--upstream", "http://h:1", "--public-host"],
        &["--upstream", "http://h:1", "--early-refresh", "-1"],
        &[
            "--upstream",
            "http://h:1",
            "--purge-token-file",
            "/nonexistent/token",
        ],
        &["--upstream", "http://h:1", "--tag-header", "bad header"],
        &["--upstream", "http://h:1", "--early-refresh", "NaN"],
        &[
            "--upstream",
            "http://h:1",
            "--ttl-ms",
            "5",
            "--max-ttl-ms",
            "9",
        ],
    ] {
        assert!(parse(bad).is_err(), "{bad:?} was accepted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_sharing_a_redis_make_one_upstream_call_per_burst() {
    const N: usize = 100;
    let redis = RedisServer::start();
    let (up, upstream) = upstream().await;
    // One public name: the proxies, on two addresses, share keys.
    let url = redis.url();
    let args = [
        "--redis",
        &url,
        "--ttl-ms",
        "60000",
        "--public-host",
        "shop.example",
    ];
    let (a, b) = (
        proxy_from(&upstream, &args).await,
        proxy_from(&upstream, &args).await,
    );
    let layers = [a.1, b.1];
    let addrs = [a.0, b.0];
    let client = client();

    let burst: Vec<_> = (0..N)
        .map(|i| {
            let (client, addr) = (client.clone(), addrs[i % 2]);
            tokio::spawn(async move { send(&client, get(addr, "/slow")).await })
        })
        .collect();
    let total = |f: fn(&tower_coalesce::Stats) -> u64| -> u64 {
        layers.iter().map(|l| f(&l.stats())).sum()
    };
    until("both instances to gather behind one call", || {
        total(|s| s.followers) == (N - 2) as u64
            && total(|s| s.remote_waits) == 1
            && up.calls("slow") == 1
    })
    .await;
    up.open_slow_gate();

    let mut outcomes = HashMap::<String, usize>::new();
    for task in burst {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, SLOW_ANSWER);
        *outcomes.entry(answer.outcome().to_owned()).or_default() += 1;
    }
    assert_eq!(up.calls("slow"), 1, "one upstream call for both proxies");
    assert_eq!(outcomes.get("leader"), Some(&1), "{outcomes:?}");
    assert_eq!(outcomes.get("follower"), Some(&(N - 1)), "{outcomes:?}");

    // Stored in Redis: either proxy now answers without the upstream.
    for addr in addrs {
        let answer = send(&client, get(addr, "/slow")).await;
        assert_eq!(
            (answer.outcome(), &answer.body[..]),
            ("hit", SLOW_ANSWER.as_bytes())
        );
    }
    assert_eq!(up.calls("slow"), 1);
    for layer in &layers {
        assert_eq!(layer.flights_in_progress(), 0);
        assert_eq!(layer.stats().backend_errors, 0);
    }
}

fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browsers_revalidation_or_seek_never_reaches_the_other_clients() {
    let (up, upstream) = upstream().await;
    let layer = layer_from(&upstream, &["--ttl-ms", "60000"]).await;
    let addr = start_proxy(&upstream, layer.clone()).await;
    let client = client();
    // A browser revalidating and a player seeking lead; plain clients follow.
    let asks: Vec<Vec<(&str, &str)>> = vec![
        vec![("if-none-match", "\"v1\"")],
        vec![],
        vec![("range", "bytes=999-")],
        vec![("range", "bytes=3-5")],
        vec![],
    ];
    let first = {
        let (client, req) = (client.clone(), get_with(addr, "/page", &asks[0]));
        tokio::spawn(async move { send(&client, req).await })
    };
    until("the leader's call", || up.calls("page") == 1).await;
    let rest: Vec<_> = asks[1..]
        .iter()
        .map(|h| {
            let (client, req) = (client.clone(), get_with(addr, "/page", h));
            tokio::spawn(async move { send(&client, req).await })
        })
        .collect();
    let mut answers = vec![first.await.unwrap()];
    for task in rest {
        answers.push(task.await.unwrap());
    }
    assert_eq!(up.calls("page"), 1, "one upstream call for all of them");
    let seen = up.seen.lock().unwrap().clone().unwrap();
    assert!(!seen.contains_key("if-none-match") && !seen.contains_key("range"));
    assert_eq!(answers[0].status, StatusCode::NOT_MODIFIED);
    assert!(answers[0].body.is_empty());
    assert_eq!(
        (answers[1].status, &answers[1].body[..]),
        (StatusCode::OK, PAGE.as_bytes())
    );
    assert_eq!(answers[2].status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(answers[2].headers["content-range"], "bytes */10");
    assert_eq!(
        (answers[3].status, &answers[3].body[..]),
        (StatusCode::PARTIAL_CONTENT, &b"345"[..])
    );
    assert_eq!(answers[3].headers["content-range"], "bytes 3-5/10");
    assert_eq!(
        (answers[4].status, &answers[4].body[..]),
        (StatusCode::OK, PAGE.as_bytes())
    );

    // What was stored is the page: later plain requests get it.
    let later = send(&client, get(addr, "/page")).await;
    assert_eq!(
        (later.status, later.outcome(), &later.body[..]),
        (StatusCode::OK, "hit", PAGE.as_bytes())
    );
    let again = send(&client, get_with(addr, "/page", &[("range", "bytes=-2")])).await;
    assert_eq!(
        (again.status, &again.body[..]),
        (StatusCode::PARTIAL_CONTENT, &b"89"[..])
    );
    assert_eq!(up.calls("page"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_forwarding_headers_never_shape_a_shared_answer() {
    let (up, upstream) = upstream().await;
    let layer = layer_from(&upstream, &["--ttl-ms", "60000"]).await;
    let addr = start_proxy(&upstream, layer.clone()).await;
    let client = client();
    let forged = [
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "gopher"),
    ];
    let answer = send(&client, get_with(addr, "/whoami", &forged)).await;
    assert_eq!(answer.outcome(), "leader");
    // The client's Host (in the key) is the forwarded host; the forged
    // headers were dropped, and a shared request carries no client address.
    assert_eq!(answer.body, format!("host={addr} for=- proto=-"));
    let other = send(&client, get(addr, "/whoami")).await;
    assert_eq!(
        (other.outcome(), &other.body[..]),
        ("hit", answer.body.as_ref())
    );
    assert_eq!(up.calls("whoami"), 1);

    // A request the layer does not share still tells the upstream who asked.
    let own = send(&client, get_with(addr, "/whoami", &[("cookie", "s=1")])).await;
    assert_eq!(own.outcome(), "bypass");
    assert_eq!(own.body, format!("host={addr} for=127.0.0.1 proto=-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_host_is_sent_for_every_request_and_trusted_headers_are_keyed() {
    let (up, upstream) = upstream().await;
    let (addr, _layer) = proxy_from(
        &upstream,
        &["--ttl-ms", "60000", "--public-host", "shop.example"],
    )
    .await;
    let client = client();
    let a = send(&client, get_with(addr, "/whoami", &[("host", "a.example")])).await;
    let b = send(&client, get_with(addr, "/whoami", &[("host", "b.example")])).await;
    assert_eq!(a.body, "host=shop.example for=- proto=-");
    assert_eq!(
        (b.outcome(), &b.body[..]),
        ("hit", a.body.as_ref()),
        "one key whatever the Host"
    );

    // Behind a trusted balancer: its forwarding headers reach the upstream,
    // the ones describing the request are keyed, the client's address only
    // on unshared requests.
    let (trusting, _layer) =
        proxy_from(&upstream, &["--ttl-ms", "60000", "--trust-forwarded"]).await;
    let https = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-for", "198.51.100.1"),
    ];
    let http = [
        ("x-forwarded-proto", "http"),
        ("x-forwarded-for", "198.51.100.2"),
    ];
    let one = send(&client, get_with(trusting, "/whoami?t", &https)).await;
    let two = send(&client, get_with(trusting, "/whoami?t", &http)).await;
    assert_eq!(one.body, format!("host={trusting} for=- proto=https"));
    assert_eq!(two.body, format!("host={trusting} for=- proto=http"));
    assert_eq!((one.outcome(), two.outcome()), ("leader", "leader"));
    assert_eq!(up.calls("whoami"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seek_into_a_body_over_the_stored_size_without_a_length_gets_the_whole_body() {
    let (up, upstream) = upstream().await;
    let layer = layer_from(&upstream, &[]).await;
    let addr = start_proxy(&upstream, layer.clone()).await;
    let client = client();
    up.big_gate.add_permits(2);
    let seek = [("range", "bytes=100-199")];
    // Its flight asks for the whole body, which has no length to cut a
    // range from: the whole body (a server may ignore `Range`).
    for _ in 0..2 {
        let answer = send(&client, get_with(addr, "/big", &seek)).await;
        assert_eq!(
            (answer.status, answer.outcome()),
            (StatusCode::OK, "leader")
        );
        assert_eq!(answer.body.len(), BIG_CHUNKS * CHUNK);
        // A flight's request carries no caller's range; the key does not
        // become pass-through for being large.
        let seen = up.seen.lock().unwrap().clone().unwrap();
        assert!(!seen.contains_key("range"), "{seen:?}");
    }
    assert_eq!(up.calls("big"), 2);
}

#[tokio::test]
async fn server_errors_with_explicit_freshness_are_stored_only_with_the_flag() {
    let (up, upstream) = upstream().await;
    let client = client();
    for (flags, second) in [(&[][..], "leader"), (&["--store-server-errors"][..], "hit")] {
        let (proxy, _layer) = proxy_from(&upstream, flags).await;
        let mut seen = Vec::new();
        for _ in 0..2 {
            let answer = send(&client, get(proxy, "/unavailable?max-age=60")).await;
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
            seen.push(answer.outcome().to_owned());
        }
        assert_eq!(seen, ["leader", second], "{flags:?}");
    }
    assert_eq!(up.calls("unavailable"), 3);
}

#[tokio::test]
async fn cdn_cache_control_speaks_for_the_proxy_unless_turned_off() {
    let (up, upstream) = upstream().await;
    let client = client();
    let cases: [(&[&str], &str, [&str; 2]); 4] = [
        // Marked private for CDNs: not stored, although Cache-Control
        // allows it (RFC 9213 §2.1); the key then passes to the upstream.
        (&[], "/targeted?private", ["leader", "pass"]),
        (
            &["--no-cdn-cache-control"],
            "/targeted?private",
            ["leader", "hit"],
        ),
        // It can also allow what Cache-Control alone would not say.
        (&[], "/targeted?max-age=60", ["leader", "hit"]),
        // A value that is not a Dictionary is ignored: Cache-Control decides.
        (&[], "/targeted?max-age=%22x", ["leader", "hit"]),
    ];
    for (flags, path, expected) in cases {
        let (proxy, _layer) = proxy_from(&upstream, flags).await;
        let mut seen = Vec::new();
        for _ in 0..2 {
            let answer = send(&client, get(proxy, path)).await;
            assert_eq!(answer.status, StatusCode::OK);
            // Passed on downstream: other caches may be meant by it too.
            assert!(answer.headers.contains_key("cdn-cache-control"));
            seen.push(answer.outcome().to_owned());
        }
        assert_eq!(seen, expected, "{flags:?} {path}");
    }
    assert_eq!(up.calls("targeted"), 5);
}

#[tokio::test]
async fn answers_are_selected_by_their_vary_and_shared_across_accept_encodings_without_it() {
    let (up, upstream) = upstream().await;
    let client = client();
    let spellings = [
        "gzip, deflate, br",
        "gzip,deflate,br",
        "gzip",
        "identity",
        "br, gzip",
    ];
    // Without Vary: one answer for every spelling.
    let (proxy, _layer) = proxy_from(&upstream, &[]).await;
    let mut seen = Vec::new();
    for spelling in spellings {
        let answer = send(
            &client,
            get_with(proxy, "/by-encoding", &[("accept-encoding", spelling)]),
        )
        .await;
        assert_eq!(answer.body, "gzip, deflate, br");
        seen.push(answer.outcome().to_owned());
    }
    assert_eq!(seen, ["leader", "hit", "hit", "hit", "hit"]);
    assert_eq!(up.calls("by-encoding"), 1);
    // With Vary: one variant per value (the first two spellings are one),
    // or per normalised value with --normalize-accept-encoding.
    for (flags, calls) in [(&[][..], 4), (&["--normalize-accept-encoding"][..], 3)] {
        let before = up.calls("by-encoding");
        let (proxy, _layer) = proxy_from(&upstream, flags).await;
        for round in 0..2 {
            for spelling in spellings {
                let req = get_with(proxy, "/by-encoding?vary", &[("accept-encoding", spelling)]);
                let answer = send(&client, req).await;
                let body = String::from_utf8(answer.body.to_vec()).unwrap();
                let expected = match (flags.is_empty(), spelling) {
                    (true, s) => s.replace(' ', ""),
                    (false, s) if s.contains("br") => "br".to_owned(),
                    (false, s) if s.contains("gzip") => "gzip".to_owned(),
                    (false, _) => "-".to_owned(),
                };
                assert_eq!(body.replace(' ', ""), expected, "{flags:?} {spelling}");
                if round == 1 {
                    assert_eq!(answer.outcome(), "hit", "{flags:?} {spelling}");
                }
            }
        }
        assert_eq!(up.calls("by-encoding") - before, calls, "{flags:?}");
    }
}

#[tokio::test]
async fn a_stale_answer_that_may_not_be_served_stale_is_revalidated() {
    let (up, upstream) = upstream().await;
    let (proxy, _layer) = proxy_from(&upstream, &[]).await;
    let client = client();
    let first = send(&client, get(proxy, "/must")).await;
    assert_eq!(first.outcome(), "leader");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for _ in 0..3 {
        let answer = send(&client, get(proxy, "/must")).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "must".repeat(1000));
    }
    // One conditional request, answered with no body; the other two were
    // hits on the renewed answer.
    assert_eq!((up.calls("must-200"), up.calls("must-304")), (1, 1));
    // Without retention, the stale answer is gone: fetched whole again.
    let (proxy, _layer) = proxy_from(&upstream, &["--revalidation-retention-ms", "0"]).await;
    send(&client, get(proxy, "/must")).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    send(&client, get(proxy, "/must")).await;
    assert_eq!((up.calls("must-200"), up.calls("must-304")), (3, 1));
}

#[tokio::test]
async fn max_stale_takes_an_answer_kept_for_revalidation_at_once() {
    let (up, upstream) = upstream().await;
    let (proxy, _layer) = proxy_from(&upstream, &[]).await;
    let client = client();
    assert_eq!(
        send(&client, get(proxy, "/brief")).await.outcome(),
        "leader"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let asked = get_with(proxy, "/brief", &[("cache-control", "max-stale=60")]);
    let answer = send(&client, asked).await;
    assert_eq!(
        (answer.outcome(), &answer.body[..]),
        ("stale", &b"brief"[..])
    );
    // Refreshed behind it, by a conditional request.
    until("the refresh", || up.calls("brief-304") == 1).await;
    assert_eq!(up.calls("brief-200"), 1);
}

#[tokio::test]
async fn a_no_store_request_leads_no_flight_and_stores_nothing() {
    let (up, upstream) = upstream().await;
    let (proxy, _layer) = proxy_from(&upstream, &[]).await;
    let client = client();
    let no_store = || get_with(proxy, "/fresh?max-age=60", &[("cache-control", "no-store")]);
    assert_eq!(send(&client, no_store()).await.outcome(), "pass");
    assert_eq!(
        send(&client, get(proxy, "/fresh?max-age=60"))
            .await
            .outcome(),
        "leader"
    );
    // Once stored, it may answer a no-store request.
    assert_eq!(send(&client, no_store()).await.outcome(), "hit");
    assert_eq!(up.calls("fresh"), 2);
}

#[tokio::test]
async fn proxies_share_answers_through_a_redis_that_speaks_tls() {
    let dir = std::env::temp_dir().join(format!("coalesce-proxy-tls-{}", std::process::id()));
    let (cert, key) = coalesce_test_redis::tls::certificate(&dir);
    let tls_port = coalesce_test_redis::free_port().to_string();
    let args = coalesce_test_redis::tls::args(&tls_port, &cert, &key);
    let _server = RedisServer::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // Self-signed: verification is off for this test only.
    let url = format!("rediss://127.0.0.1:{tls_port}/#insecure");
    let (up, upstream) = upstream().await;
    let client = client();
    // One public name: proxies reached at different addresses share keys.
    let flags = ["--redis", &url, "--public-host", "shop.example"];
    let (first, _a) = proxy_from(&upstream, &flags).await;
    let (second, _b) = proxy_from(&upstream, &flags).await;
    let answer = send(&client, get(first, "/fresh?max-age=60")).await;
    assert_eq!(answer.outcome(), "leader");
    let answer = send(&client, get(second, "/fresh?max-age=60")).await;
    assert_eq!(answer.outcome(), "hit", "found in Redis, over TLS");
    assert_eq!(up.calls("fresh"), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_expires_with_a_wrong_weekday_or_letter_case_is_read() {
    let (up, upstream) = upstream().await;
    let (proxy, _layer) = proxy_from(&upstream, &[]).await;
    let client = client();
    assert_eq!(
        send(&client, get(proxy, "/dated")).await.outcome(),
        "leader"
    );
    assert_eq!(send(&client, get(proxy, "/dated")).await.outcome(), "hit");
    assert_eq!(up.calls("dated"), 1);
}

#[tokio::test]
async fn by_default_answers_are_kept_as_long_as_the_upstream_says() {
    let (up, upstream) = upstream().await;
    let (proxy, _layer) = proxy_from(&upstream, &[]).await;
    let client = client();
    let outcomes = |path: &'static str| {
        let client = client.clone();
        async move {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let answer = send(&client, get(proxy, path)).await;
                assert_eq!(answer.status, StatusCode::OK);
                seen.push(answer.outcome().to_owned());
            }
            seen
        }
    };
    assert_eq!(outcomes("/fresh?max-age=60").await, ["leader", "hit"]);
    // must-understand, from a cache that understands 200: the no-store
    // beside it is for caches that do not (RFC 9111 §5.2.2.3).
    assert_eq!(
        outcomes("/fresh?max-age=60,%20must-understand,%20no-store").await,
        ["leader", "hit"]
    );
    // Each answer says how the proxy handled it (RFC 9211).
    let answer = send(&client, get(proxy, "/fresh?max-age=60")).await;
    let status = answer.headers["cache-status"].to_str().unwrap();
    assert!(status.starts_with("coalesce-proxy; hit; ttl="), "{status}");
    assert_eq!(
        outcomes("/fresh?s-maxage=60,%20max-age=0").await,
        ["leader", "hit"]
    );
    // Nothing stored: no freshness, none left, or none allowed without
    // revalidation.
    for path in [
        "/fresh",
        "/fresh?max-age=0",
        "/fresh?no-cache,%20max-age=60",
        "/fresh?max-age=soon",
        "/fresh?public",
    ] {
        assert_eq!(outcomes(path).await, ["leader", "leader"], "{path}");
    }
    assert_eq!(up.calls("fresh"), 3 + 2 * 5);
    let answer = send(&client, get(proxy, "/fresh")).await;
    assert_eq!(
        answer.headers["cache-status"],
        "coalesce-proxy; fwd=miss; fwd-status=200"
    );

    // `--ttl-ms` keeps every shareable answer that long, whatever it says.
    let (fixed, _layer) = proxy_from(&upstream, &["--ttl-ms", "60000"]).await;
    for _ in 0..2 {
        send(&client, get(fixed, "/fresh?max-age=0")).await;
    }
    assert_eq!(up.calls("fresh"), 3 + 2 * 5 + 1 + 1);
}

#[tokio::test]
async fn an_upstreams_stale_while_revalidate_is_served_stale_while_one_refresh_runs() {
    let (up, upstream) = upstream().await;
    let (proxy, layer) = proxy_from(&upstream, &[]).await;
    let client = client();
    // Fresh for 2 to 3 s once `Date`'s whole seconds are counted: the hit
    // after the refresh below is well inside it.
    let path = "/fresh?max-age=3,%20stale-while-revalidate=30";
    assert_eq!(send(&client, get(proxy, path)).await.outcome(), "leader");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let answer = send(&client, get(proxy, path)).await;
    assert_eq!(answer.outcome(), "stale");
    assert_eq!(answer.body, "fresh");
    until("the refresh", || {
        layer.stats().refreshes == 1 && layer.flights_in_progress() == 0
    })
    .await;
    assert_eq!(send(&client, get(proxy, path)).await.outcome(), "hit");
    assert_eq!(up.calls("fresh"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_requests_with_the_token_purge_by_url_and_by_tag() {
    let (up, upstream) = upstream().await;
    let dir = std::env::temp_dir().join(format!("coalesce-purge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-purge-token-0123\n").unwrap();
    let args = args_from(
        &upstream,
        &["--purge-token-file", token_file.to_str().unwrap()],
    );
    assert_eq!(args.purge_token.as_deref(), Some("s3cret-purge-token-0123"));
    let layer = coalesce_proxy::layer(&args).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = coalesce_proxy::proxy_service(upstream.clone(), args.forwarding.clone(), layer)
        .unwrap()
        .with_purge_token(args.purge_token.as_deref().unwrap());
    tokio::spawn(coalesce_proxy::serve(
        listener,
        proxy,
        std::future::pending(),
    ));
    let client = client();
    let purge = |token: Option<&str>, tags: Option<&str>| {
        let mut req = Request::builder()
            .method("PURGE")
            .uri(format!("http://{addr}/tagged"));
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        if let Some(tags) = tags {
            req = req.header("x-purge-tag", tags);
        }
        req.body(Full::default()).unwrap()
    };

    let first = send(&client, get(addr, "/tagged")).await;
    assert_eq!(first.body, "tagged 1");
    assert!(
        !first.headers.contains_key("surrogate-key"),
        "tags are stripped"
    );
    assert_eq!(send(&client, get(addr, "/tagged")).await.outcome(), "hit");

    // Without the token, or with another: refused, and nothing purged.
    for token in [None, Some("s3cret-purge-token-0124"), Some("short")] {
        let refused = send(&client, purge(token, None)).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    assert_eq!(send(&client, get(addr, "/tagged")).await.outcome(), "hit");
    assert_eq!(up.calls("tagged"), 1, "a PURGE never reaches the upstream");

    let purged = send(&client, purge(Some("s3cret-purge-token-0123"), None)).await;
    assert_eq!(purged.status, StatusCode::OK);
    // Both forms of the URL (HTTP/1.1 path + Host, HTTP/2 absolute URI).
    assert_eq!(purged.body, "purged url /tagged at 2\n");
    let again = send(&client, get(addr, "/tagged")).await;
    assert_eq!(
        (again.outcome(), &again.body[..]),
        ("leader", &b"tagged 2"[..])
    );

    let purged = send(
        &client,
        purge(Some("s3cret-purge-token-0123"), Some("t2 nope")),
    )
    .await;
    assert_eq!(purged.status, StatusCode::OK);
    assert_eq!(purged.body, "purged tag t2 at 3\npurged tag nope at 4\n");
    assert_eq!(
        send(&client, get(addr, "/tagged")).await.outcome(),
        "leader"
    );
    let bad = send(
        &client,
        purge(Some("s3cret-purge-token-0123"), Some("caf\u{e9}")),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // An unsafe request the upstream accepts purges its URL too.
    assert_eq!(send(&client, get(addr, "/tagged")).await.outcome(), "hit");
    let post = Request::post(format!("http://{addr}/tagged"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&client, post).await.status, StatusCode::OK);
    assert_eq!(
        send(&client, get(addr, "/tagged")).await.outcome(),
        "leader"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

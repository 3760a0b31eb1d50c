//! Unusual and hostile requests: huge and numerous headers, targets with
//! bytes that are not UTF-8 or odd percent-encodings, keys far longer than a
//! Redis key should be, and credentials. None of them may panic the layer,
//! merge requests that differ in their key, split requests that do not, or
//! hand one caller the answer meant for another.

mod support;

use axum::body::Body;
use axum::extract::State;
use axum::Router;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Full;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::redis::RedisServer;
use support::{body, get, until, Origin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tower::{Layer, ServiceExt};
use tower_coalesce::{
    BoxError, CoalesceBody, CoalesceConfig, CoalesceLayer, HttpKey, KeyExtractor, Outcome,
    RedisBackend,
};

/// A 200 whose body is every `Accept` value of the request, one per line:
/// proof of which request an answer was made for.
async fn echo_accept(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, BoxError> {
    let mut out = Vec::new();
    for value in req.headers().get_all(header::ACCEPT) {
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    Ok(Response::new(Full::new(Bytes::from(out))))
}

/// What `echo_accept` answers for these values.
fn accept_echo(values: &[HeaderValue]) -> Bytes {
    let mut out = Vec::new();
    for value in values {
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    Bytes::from(out)
}

/// A header value of `len` bytes that ends in `last`: two of them differ in
/// their final byte only, so nothing but a comparison of the whole value can
/// tell them apart.
fn huge_value(len: usize, last: u8) -> HeaderValue {
    let mut bytes = vec![b'a'; len - 1];
    bytes.push(last);
    HeaderValue::from_bytes(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_accept_values_are_keyed_whole_merged_when_equal_and_apart_when_not() {
    const EACH: usize = 50;
    let origin = Origin::gated();
    let layer = CoalesceLayer::new(CoalesceConfig::new());
    let svc = layer.layer(origin.serve(echo_accept));
    let values = [huge_value(64 * 1024, b'1'), huge_value(64 * 1024, b'2')];

    let mut tasks = Vec::new();
    for i in 0..2 * EACH {
        let value = values[i % 2].clone();
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get("/huge")
                .header(header::ACCEPT, value.clone())
                .body(Full::new(Bytes::new()))
                .unwrap();
            (value, svc.oneshot(req).await)
        }));
    }
    until(&layer, "two flights with their followers", |s| {
        s.flights == 2 && s.followers == (2 * EACH - 2) as u64
    })
    .await;
    origin.open_gate();

    let mut leaders = 0;
    for task in tasks {
        let (value, res) = task.await.unwrap();
        let res = res.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        leaders += usize::from(res.extensions().get::<Outcome>() == Some(&Outcome::Leader));
        let got = body(res).await.unwrap();
        assert!(
            got == accept_echo(&[value]),
            "a caller got the answer for another 64 KiB Accept value"
        );
    }
    assert_eq!(leaders, 2);
    assert_eq!(origin.calls(), 2, "one call per distinct value");
    assert_eq!(layer.flights_in_progress(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_headers_and_two_hundred_accept_values_are_handled_exactly() {
    const EACH: usize = 30;
    let origin = Origin::gated();
    let layer = CoalesceLayer::new(CoalesceConfig::new());
    let svc = layer.layer(origin.serve(echo_accept));

    let accepts: Vec<HeaderValue> = (0..200)
        .map(|j| HeaderValue::from_str(&format!("text/x-{j}")).unwrap())
        .collect();
    // The same list with its last value changed, and the list less its last
    // value: each is another key.
    let mut changed = accepts.clone();
    changed[199] = HeaderValue::from_static("text/x-other");
    let shorter = accepts[..199].to_vec();
    let lists = [accepts, changed, shorter];

    let mut tasks = Vec::new();
    for i in 0..3 * EACH {
        let list = lists[i % 3].clone();
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = Request::get("/many");
            // A thousand distinct headers outside the key, with values that
            // differ from request to request: they must not split the flight.
            for n in 0..1000 {
                req = req.header(format!("x-h-{n}"), format!("{i}-{n}"));
            }
            for value in &list {
                req = req.header(header::ACCEPT, value.clone());
            }
            let req = req.body(Full::new(Bytes::new())).unwrap();
            assert_eq!(req.headers().len(), 1000 + list.len());
            (list, svc.oneshot(req).await)
        }));
    }
    until(&layer, "three flights with their followers", |s| {
        s.flights == 3 && s.followers == (3 * EACH - 3) as u64
    })
    .await;
    origin.open_gate();

    for task in tasks {
        let (list, res) = task.await.unwrap();
        let got = body(res.unwrap()).await.unwrap();
        assert!(
            got == accept_echo(&list),
            "a caller got the answer for another Accept list"
        );
    }
    assert_eq!(origin.calls(), 3, "one call per distinct Accept list");
    assert_eq!(layer.flights_in_progress(), 0);
}

/// A 200 whose body is the request target, exactly as the layer saw it.
async fn echo_target(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, BoxError> {
    let target = req.uri().path_and_query().map_or("", |pq| pq.as_str());
    Ok(Response::new(Full::new(Bytes::copy_from_slice(
        target.as_bytes(),
    ))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_bytes_and_percent_encodings_in_path_and_query_coalesce_per_target() {
    const EACH: usize = 10;
    // `http::Uri` takes raw bytes above 0x7f only when they form UTF-8, and
    // takes `%` without checking what follows it.
    let targets: Vec<&[u8]> = vec![
        b"/a%FF?q=%FF",
        b"/a%ff?q=%ff",
        b"/a%FE?q=%FF",
        b"/a%00%zz%?q=%%%",
        "/café/\u{1F600}?q=é".as_bytes(),
        b"/a?q=%FF&q=%C3%A9",
    ];
    assert!(
        Uri::from_maybe_shared(Bytes::from_static(b"/bad\xff\xfe?q=\xff")).is_err(),
        "raw bytes that are not UTF-8 cannot reach a layer through http::Uri"
    );
    let origin = Origin::gated();
    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let svc = layer.layer(origin.serve(echo_target));

    let mut tasks = Vec::new();
    for _ in 0..EACH {
        for target in &targets {
            let uri = Uri::from_maybe_shared(Bytes::copy_from_slice(target)).unwrap();
            let (svc, expected) = (svc.clone(), target.to_vec());
            let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
            tasks.push(tokio::spawn(
                async move { (expected, svc.oneshot(req).await) },
            ));
        }
    }
    let n = targets.len();
    until(&layer, "one flight per target", |s| {
        s.flights == n as u64 && s.followers == (n * (EACH - 1)) as u64
    })
    .await;
    origin.open_gate();
    for task in tasks {
        let (target, res) = task.await.unwrap();
        let got = body(res.unwrap()).await.unwrap();
        assert_eq!(got, target, "answered for another target");
    }
    assert_eq!(origin.calls(), n);

    // Stored under their own keys: each target hits its own answer.
    for target in &targets {
        let uri = Uri::from_maybe_shared(Bytes::copy_from_slice(target)).unwrap();
        let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Hit));
        assert_eq!(body(res).await.unwrap(), *target);
    }
    assert_eq!(origin.calls(), n);
}

/// An axum upstream whose handler counts calls per target and holds every
/// answer until the gate opens; its answer names the target and the Accept
/// value it was made for.
#[derive(Clone)]
struct Upstream {
    calls: Arc<Mutex<HashMap<Vec<u8>, usize>>>,
    gate: Arc<Semaphore>,
}

impl Upstream {
    fn new() -> Self {
        Self {
            calls: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    fn total_calls(&self) -> usize {
        self.calls.lock().unwrap().values().sum()
    }
}

async fn gated_echo(State(up): State<Upstream>, req: Request<Body>) -> Vec<u8> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("", |pq| pq.as_str())
        .as_bytes()
        .to_vec();
    *up.calls.lock().unwrap().entry(target.clone()).or_default() += 1;
    let _permit = up.gate.acquire().await.unwrap();
    let mut out = target;
    out.push(b'|');
    if let Some(accept) = req.headers().get(header::ACCEPT) {
        out.extend_from_slice(accept.as_bytes());
    }
    out
}

/// One HTTP/1.1 exchange written byte for byte: status, outcome header, body.
async fn raw_get(addr: std::net::SocketAddr, target: &[u8], accept: Option<&[u8]>) -> RawAnswer {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
        if let Some(accept) = accept {
            req.extend_from_slice(b"Accept: ");
            req.extend_from_slice(accept);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        stream.write_all(&req).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("no answer within 20 s");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let outcome = head
        .lines()
        .find_map(|l| l.strip_prefix("x-coalesce: "))
        .map(str::to_owned);
    RawAnswer {
        status,
        outcome,
        body: raw[split + 4..].to_vec(),
    }
}

struct RawAnswer {
    status: u16,
    outcome: Option<String>,
    body: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_raw_tcp_odd_targets_and_huge_headers_reach_axum_safely() {
    const EACH: usize = 10;
    let up = Upstream::new();
    let layer = CoalesceLayer::new(CoalesceConfig::new().outcome_header("x-coalesce"));
    let app = Router::new()
        .fallback(gated_echo)
        .with_state(up.clone())
        .layer(layer.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // hyper's parser takes any byte above 0x20 in the target, but the target
    // must then become an `http::Uri`: raw UTF-8 does, raw invalid UTF-8 is
    // refused with a 400 before any service sees it.
    let huge_a = vec![b'a'; 64 * 1024];
    let mut huge_b = huge_a.clone();
    *huge_b.last_mut().unwrap() = b'b';
    let cases: Vec<(&[u8], Option<&[u8]>)> = vec![
        (b"/p%FF?q=%FF", None),
        (b"/p%fe?q=%00%zz", None),
        (b"/caf\xc3\xa9?q=\xc3\xa9", None),
        (b"/huge", Some(&huge_a[..])),
        (b"/huge", Some(&huge_b[..])),
    ];
    let mut tasks = Vec::new();
    for _ in 0..EACH {
        for (i, (target, accept)) in cases.iter().enumerate() {
            let (target, accept) = (target.to_vec(), accept.map(<[u8]>::to_vec));
            tasks.push(tokio::spawn(async move {
                (i, raw_get(addr, &target, accept.as_deref()).await)
            }));
        }
    }
    let keys = cases.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while up.total_calls() != keys || layer.stats().followers != (keys * (EACH - 1)) as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "burst never gathered: {} upstream calls, {:?}",
            up.total_calls(),
            layer.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    up.gate.add_permits(Semaphore::MAX_PERMITS / 2);

    let mut leaders = vec![0; keys];
    for task in tasks {
        let (i, answer) = task.await.unwrap();
        let (target, accept) = cases[i];
        assert_eq!(answer.status, 200, "case {i}");
        let mut expected = target.to_vec();
        expected.push(b'|');
        expected.extend_from_slice(accept.unwrap_or_default());
        assert!(answer.body == expected, "case {i} got another answer");
        let outcome = answer.outcome.expect("outcome header");
        assert!(outcome == "leader" || outcome == "follower", "{outcome}");
        leaders[i] += usize::from(outcome == "leader");
    }
    assert_eq!(leaders, vec![1; keys], "one leader per key");
    assert_eq!(
        up.calls.lock().unwrap().get(&b"/huge"[..]),
        Some(&2),
        "the two 64 KiB Accept values are two keys"
    );

    // Raw bytes that are not UTF-8: refused by the server, never a panic, and
    // the server goes on serving.
    let before = layer.stats().requests;
    let refused = raw_get(addr, b"/bad\xff\xfe?q=\xff", None).await;
    assert_eq!(refused.status, 400);
    assert_eq!(layer.stats().requests, before, "never reached the layer");
    let after = raw_get(addr, b"/p%FF?q=%FF", None).await;
    assert_eq!(after.status, 200);
    assert_eq!(after.body, b"/p%FF?q=%FF|");
    assert_eq!(layer.flights_in_progress(), 0);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_over_a_mebibyte_works_across_instances_and_its_redis_names_are_short() {
    const EACH: usize = 10;
    let server = RedisServer::start();
    let origin = Origin::gated();
    // The answer names its request without copying the megabyte: the target,
    // the Accept length and its last byte.
    let svc_fn = |req: Request<Full<Bytes>>| async move {
        let accept = req.headers()[header::ACCEPT].as_bytes();
        let answer = format!(
            "{}|{}|{}",
            req.uri().path_and_query().unwrap().as_str().len(),
            accept.len(),
            *accept.last().unwrap() as char
        );
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(answer))))
    };
    let mut instances = Vec::new();
    for _ in 0..3 {
        // Every Redis name is a SHA-256 of the whole key, computed inside the
        // bounded backend call (three times for a completion), on a runtime
        // worker. Unoptimised test builds hash about 13 MiB/s, so with a
        // 1 MiB key the default 250 ms bounds (the layer's and the Redis
        // client's) are missed; this test is about correctness, not speed.
        let backend = RedisBackend::builder(server.url())
            .response_timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap();
        let layer = CoalesceLayer::new(
            CoalesceConfig::new()
                .ttl(Duration::from_secs(60))
                .backend_timeout(Duration::from_secs(2))
                .backend(backend),
        );
        let svc = layer.layer(origin.serve(svc_fn));
        instances.push((layer, svc));
    }

    // `http::Uri` holds at most 65,534 bytes, so the target is as long as it
    // can be and a 1 MiB Accept value (part of the default key) makes up the
    // rest: the key is over 1 MiB.
    let query = "q".repeat(65_000);
    let target = format!("/big?{query}");
    let request = |last: u8| {
        Request::get(target.as_str())
            .header(header::ACCEPT, huge_value(1 << 20, last))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let key = HttpKey::new().extract(&request(b'1')).unwrap();
    assert!(key.resource().len() + key.variant().len() > (1 << 20));
    let expected = |last: char| format!("{}|{}|{last}", target.len(), 1 << 20);

    // A burst over two instances: one origin call, everyone answered.
    let mut tasks = Vec::new();
    for i in 0..2 * EACH {
        let svc = instances[i % 2].1.clone();
        tasks.push(tokio::spawn(svc.oneshot(request(b'1'))));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let followers: u64 = instances[..2].iter().map(|i| i.0.stats().followers).sum();
        let waits: u64 = instances[..2]
            .iter()
            .map(|i| i.0.stats().remote_waits)
            .sum();
        if followers == (2 * EACH - 2) as u64 && waits == 1 && origin.calls() == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "burst never gathered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    origin.open_gate();
    for task in tasks {
        let res = task.await.unwrap().unwrap();
        assert_eq!(body(res).await.unwrap(), expected('1'));
    }
    assert_eq!(
        origin.calls(),
        1,
        "one origin call across both instances: {:?}",
        instances.iter().map(|i| i.0.stats()).collect::<Vec<_>>()
    );

    // A key that differs in its very last byte is another entry.
    let res = instances[0].1.clone().oneshot(request(b'2')).await.unwrap();
    assert_eq!(body(res).await.unwrap(), expected('2'));
    assert_eq!(origin.calls(), 2);
    // A third instance finds both answers in Redis under their hashed names.
    for last in [b'1', b'2'] {
        let res = instances[2].1.clone().oneshot(request(last)).await.unwrap();
        assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Hit));
        assert_eq!(body(res).await.unwrap(), expected(last as char));
    }
    assert_eq!(origin.calls(), 2);

    let mut conn = server.conn();
    let mut names: Vec<Vec<u8>> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query(&mut conn)
            .unwrap();
        names.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert!(names.len() >= 2, "both answers are stored: {names:?}");
    for name in &names {
        assert!(
            name.len() < 100,
            "a Redis key of {} bytes: {:?}",
            name.len(),
            String::from_utf8_lossy(&name[..name.len().min(200)])
        );
    }
    for (layer, _) in &instances {
        assert_eq!(layer.stats().backend_errors, 0, "{:?}", layer.stats());
        assert_eq!(layer.flights_in_progress(), 0);
    }
}

/// A request under way, with the credential it sent.
type Credentialed = JoinHandle<(
    &'static str,
    Result<Response<CoalesceBody<Full<Bytes>>>, BoxError>,
)>;

/// `each` requests per user, interleaved, all under way at once.
fn credential_burst<S>(
    svc: &S,
    name: header::HeaderName,
    users: [&'static str; 2],
    each: usize,
) -> Vec<Credentialed>
where
    S: tower::Service<
            Request<Full<Bytes>>,
            Response = Response<CoalesceBody<Full<Bytes>>>,
            Error = BoxError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    (0..2 * each)
        .map(|i| {
            let user = users[i % 2];
            let req = Request::get("/me")
                .header(name.clone(), user)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let svc = svc.clone();
            tokio::spawn(async move { (user, svc.oneshot(req).await) })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_on_one_url_never_receive_each_others_answers() {
    const EACH: usize = 100;
    let users = ["Bearer alice-token", "Bearer bob-token"];
    // The answer is the credential it was made for.
    let echo_auth = |req: Request<Full<Bytes>>| async move {
        let who = req
            .headers()
            .get(header::AUTHORIZATION)
            .or_else(|| req.headers().get(header::COOKIE))
            .map_or(Bytes::new(), |v| Bytes::copy_from_slice(v.as_bytes()));
        Ok::<_, BoxError>(Response::new(Full::new(who)))
    };

    // The default key: credentialed requests bypass, each to the origin.
    let origin = Origin::gated();
    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let svc = layer.layer(origin.serve(echo_auth));
    let mut tasks = credential_burst(&svc, header::AUTHORIZATION, users, EACH);
    tasks.extend(credential_burst(&svc, header::COOKIE, users, EACH));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while origin.calls() != 4 * EACH {
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests never all reached the origin"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    origin.open_gate();
    for task in tasks {
        let (user, res) = task.await.unwrap();
        let res = res.unwrap();
        assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Bypass));
        assert_eq!(body(res).await.unwrap(), user, "got another user's answer");
    }
    let stats = layer.stats();
    assert_eq!((stats.bypasses, stats.flights), (4 * EACH as u64, 0));

    // Keyed by the credential: one flight per user, answers stay apart, and
    // the stored ones are found by their own user only.
    let origin = Origin::gated();
    let layer = CoalesceLayer::builder(CoalesceConfig::new().ttl(Duration::from_secs(60)))
        .extractor(HttpKey::new().vary(header::AUTHORIZATION))
        .build()
        .unwrap();
    let svc = layer.layer(origin.serve(echo_auth));
    let tasks = credential_burst(&svc, header::AUTHORIZATION, users, EACH);
    until(&layer, "one flight per user", |s| {
        s.flights == 2 && s.followers == (2 * EACH - 2) as u64
    })
    .await;
    origin.open_gate();
    for task in tasks {
        let (user, res) = task.await.unwrap();
        assert_eq!(
            body(res.unwrap()).await.unwrap(),
            user,
            "got another user's answer"
        );
    }
    assert_eq!(origin.calls(), 2);
    for user in users.iter().rev() {
        let req = Request::get("/me")
            .header(header::AUTHORIZATION, *user)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Hit));
        assert_eq!(body(res).await.unwrap(), *user);
    }
    let anonymous = svc.clone().oneshot(get("/me")).await.unwrap();
    assert_eq!(
        body(anonymous).await.unwrap(),
        "",
        "a request without credentials gets neither user's answer"
    );
}

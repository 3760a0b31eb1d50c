//! The `coalesce-proxy` binary as OS processes sharing a real redis-server:
//! a leader killed mid-call is taken over and no waiting request fails; a
//! leader sent `SIGTERM` finishes what it can within its grace, releases its
//! lease at once, and exits cleanly; `SIGHUP` reloads the listener's
//! certificate.

mod support;

use axum::body::Body;
use axum::extract::State;
use axum::Router;
use bytes::Bytes;
use coalesce_test_redis::{free_port, RedisCluster, RedisServer};
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_coalesce::{CoalesceConfig, CoalesceLayer, KeyExtractor, RedisBackend};

#[derive(Clone)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

async fn gated_answer(State(up): State<Upstream>, req: Request<Body>) -> String {
    up.calls.fetch_add(1, Ordering::SeqCst);
    let _permit = up.gate.acquire().await.unwrap();
    format!("answer for {}", req.uri().path())
}

/// A proxy running as its own OS process; killed when dropped.
struct ProxyProcess {
    child: Child,
    addr: SocketAddr,
}

impl ProxyProcess {
    /// Answers kept 60 s, a 1 s lease, one public host name.
    fn start(upstream: &Uri, redis: &str) -> Self {
        Self::start_with(upstream, redis, "1000", &[])
    }

    /// Answers kept 60 s, this lease, one public host name, and `extra`.
    fn start_with(upstream: &Uri, redis: &str, lease_ms: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--ttl-ms", "60000", "--lease-ms", lease_ms];
        args.extend(extra);
        Self::start_args(upstream, redis, &args)
    }

    /// One public host name, and `args`.
    fn start_args(upstream: &Uri, redis: &str, args: &[&str]) -> Self {
        Self::start_on(upstream, &["--redis", redis], args)
    }

    /// One public host name, answers shared through `redis` (`--redis URL`
    /// or `--redis-cluster URLS`), and `args`.
    fn start_on(upstream: &Uri, redis: &[&str], args: &[&str]) -> Self {
        Self::start_logging(upstream, redis, args, Stdio::null())
    }

    /// As `start_on`, its standard error (its logs) going to `logs`.
    fn start_logging(upstream: &Uri, redis: &[&str], args: &[&str], logs: Stdio) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let bin = env!("CARGO_BIN_EXE_coalesce-proxy");
        let child = Command::new(bin)
            .args(["--listen", &addr.to_string()])
            .args(["--upstream", &upstream.to_string()])
            .args(redis)
            .args(["--public-host", "shop.example"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(logs)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
        let mut proxy = ProxyProcess { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("the proxy exited with {status} before listening on {addr}");
            }
            assert!(
                Instant::now() < deadline,
                "the proxy never listened on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    /// SIGTERM: the process shuts down gracefully.
    fn terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -TERM failed");
    }

    /// Waits (bounded) for the process to exit.
    fn exit_status(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: the process dies at once, releasing nothing.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Status, outcome header and body of a GET through a proxy, or `None` if
/// the connection failed; bounded.
async fn try_fetch(addr: SocketAddr, path: &str) -> Option<(StatusCode, String, Bytes)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: Uri = format!("http://{addr}{path}").parse().unwrap();
    let exchange = async {
        let res = client.get(uri).await.ok()?;
        let status = res.status();
        let outcome = res
            .headers()
            .get("x-coalesce")
            .map_or("<none>", |v| v.to_str().unwrap())
            .to_owned();
        let body = res.into_body().collect().await.ok()?.to_bytes();
        Some((status, outcome, body))
    };
    tokio::time::timeout(Duration::from_secs(25), exchange)
        .await
        .expect("no answer within 25 s")
}

async fn fetch(addr: SocketAddr, path: &str) -> (StatusCode, String, Bytes) {
    try_fetch(addr, path)
        .await
        .unwrap_or_else(|| panic!("the proxy at {addr} did not answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_process_killed_mid_call_is_taken_over_and_no_waiting_request_fails() {
    const EACH: usize = 20;
    let server = RedisServer::start();
    let (up, upstream) = gated_upstream().await;

    // Two proxies as processes of their own, and a third in this process
    // whose counters can be read; all with a 1 s lease, so that the waiting
    // ones look at the dead leader's lease every second.
    let forwarding = coalesce_proxy::Forwarding {
        public_host: Some(http::HeaderValue::from_static("shop.example")),
        trust: false,
    };
    let mut doomed = ProxyProcess::start(&upstream, &server.url());
    let survivor = ProxyProcess::start(&upstream, &server.url());
    let layer = CoalesceLayer::builder(
        CoalesceConfig::new()
            .ttl(Duration::from_millis(60_000))
            .lease(Duration::from_secs(1))
            .outcome_header("x-coalesce")
            .backend(RedisBackend::connect(server.url()).await.unwrap()),
    )
    .extractor(coalesce_proxy::proxy_key(&upstream, &forwarding))
    .build()
    .unwrap();
    let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local_addr = local.local_addr().unwrap();
    let svc =
        coalesce_proxy::proxy_service(upstream.clone(), forwarding.clone(), layer.clone()).unwrap();
    tokio::spawn(coalesce_proxy::serve(local, svc, std::future::pending()));

    // Every proxy keys a client's `GET /gated` the same, whatever address
    // the client reached it by.
    let key = coalesce_proxy::proxy_key(&upstream, &forwarding)
        .extract(
            &Request::get("/gated")
                .header(header::HOST, "any.example")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .unwrap();
    let names = RedisBackend::connect(server.url()).await.unwrap();
    let (lock, channel) = (names.lock_key(&key), names.done_channel(&key));
    let mut conn = server.conn();

    let doomed_addr = doomed.addr;
    let lost = tokio::spawn(async move { try_fetch(doomed_addr, "/gated").await });
    let deadline = Instant::now() + Duration::from_secs(20);
    while up.calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the first proxy never called");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let holder: Option<String> = redis::cmd("GET").arg(&lock).query(&mut conn).unwrap();
    assert!(
        holder.is_some(),
        "the first proxy holds the lease on {lock}"
    );

    let mut waiting = Vec::new();
    for addr in [survivor.addr, local_addr] {
        for _ in 0..EACH {
            waiting.push(tokio::spawn(
                async move { (addr, fetch(addr, "/gated").await) },
            ));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let subscribers = subscribers(&mut conn, &channel);
        let s = layer.stats();
        if subscribers == 2 && s.remote_waits == 1 && s.followers == (EACH - 1) as u64 {
            break;
        }
        if Instant::now() > deadline {
            let channels: Vec<String> = redis::cmd("PUBSUB")
                .arg("CHANNELS")
                .query(&mut conn)
                .unwrap();
            panic!("the other proxies never waited on {channel}: {subscribers} subscribers, channels {channels:?}, {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.calls.load(Ordering::SeqCst), 1);

    doomed.kill();
    let killed_at = Instant::now();
    up.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    assert!(
        lost.await.unwrap().is_none(),
        "the killed proxy's own client gets no answer"
    );

    let mut survivor_leaders = 0;
    for task in waiting {
        let (addr, (status, outcome, body)) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "a request to {addr} failed");
        assert_eq!(body, "answer for /gated");
        assert!(
            outcome == "leader" || outcome == "follower",
            "{addr}: {outcome}"
        );
        if addr == survivor.addr {
            survivor_leaders += usize::from(outcome == "leader");
        }
    }
    let took = killed_at.elapsed();
    eprintln!(
        "leader process killed: taken over and answered {took:?} later, {} upstream calls",
        up.calls.load(Ordering::SeqCst)
    );
    assert!(
        took < Duration::from_secs(20),
        "the dead leader's 1 s lease should be taken over well within the 30 s wait: {took:?}"
    );
    assert!(
        up.calls.load(Ordering::SeqCst) <= 2,
        "the dead leader's call and one takeover at most"
    );
    assert_eq!(
        layer.stats().takeovers + survivor_leaders as u64,
        1,
        "exactly one surviving instance took the flight over: {:?}",
        layer.stats()
    );
    // The answer is stored: every surviving proxy now answers from Redis.
    for addr in [survivor.addr, local_addr] {
        let (status, outcome, body) = fetch(addr, "/gated").await;
        assert_eq!((status, outcome.as_str()), (StatusCode::OK, "hit"));
        assert_eq!(body, "answer for /gated");
    }
    assert_eq!(layer.flights_in_progress(), 0);
}

/// The gated upstream, on a loopback port of its own.
async fn gated_upstream() -> (Upstream, Uri) {
    upstream_with(gated_answer).await
}

/// An upstream answering with `handler`, on a loopback port of its own.
async fn upstream_with<H, T>(handler: H) -> (Upstream, Uri)
where
    H: axum::handler::Handler<T, Upstream>,
    T: 'static,
{
    let up = Upstream {
        calls: Arc::default(),
        gate: Arc::new(Semaphore::new(0)),
    };
    let app = Router::new().fallback(handler).with_state(up.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream: Uri = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (up, upstream)
}

/// How many connections listen on `channel`.
fn subscribers(conn: &mut redis::Connection, channel: &str) -> u64 {
    let (_, n): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query(conn)
        .unwrap();
    n
}

/// Waits (bounded) until the upstream has been called `n` times.
async fn until_calls(up: &Upstream, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while up.calls.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < deadline, "{what}: never called");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_sent_sigterm_releases_its_lease_and_another_instance_takes_over_at_once() {
    const EACH: usize = 10;
    let server = RedisServer::start();
    let (up, upstream) = gated_upstream().await;
    // 30 s leases: an instance waiting on a lease nobody released would
    // wait about that long (past the 25 s the fetches below allow).
    let grace = ["--shutdown-grace-ms", "300"];
    let mut leaving = ProxyProcess::start_with(&upstream, &server.url(), "30000", &grace);
    let staying = ProxyProcess::start_with(&upstream, &server.url(), "30000", &[]);

    let leaving_addr = leaving.addr;
    let cut_short = tokio::spawn(async move { try_fetch(leaving_addr, "/gated").await });
    until_calls(&up, 1, "the leaving proxy").await;
    let waiting: Vec<_> = (0..EACH)
        .map(|_| {
            let addr = staying.addr;
            tokio::spawn(async move { fetch(addr, "/gated").await })
        })
        .collect();
    // The staying proxy waits on the leaving one's lease.
    let key = coalesce_proxy::proxy_key(
        &upstream,
        &coalesce_proxy::Forwarding {
            public_host: Some(http::HeaderValue::from_static("shop.example")),
            trust: false,
        },
    )
    .extract(&Request::get("/gated").body(Empty::<Bytes>::new()).unwrap())
    .unwrap();
    let channel = RedisBackend::connect(server.url())
        .await
        .unwrap()
        .done_channel(&key);
    let mut conn = server.conn();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if subscribers(&mut conn, &channel) == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the staying proxy never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    leaving.terminate();
    let terminated = Instant::now();
    // The upstream still holds the first call: the grace runs out, the
    // leaving proxy stops its flight and releases the lease, and the
    // staying one leads at once instead of waiting out 30 s.
    until_calls(&up, 2, "the staying proxy after the release").await;
    let took = terminated.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "taken over {took:?} after SIGTERM: the lease was not released"
    );
    assert!(
        leaving.exit_status(Duration::from_secs(10)).success(),
        "a graceful shutdown exits with success"
    );
    // The cut-short request ends one way or another, and does not hang.
    let _ = cut_short.await.unwrap();

    up.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    for task in waiting {
        let (status, _, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "answer for /gated");
    }
    assert_eq!(up.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_connections_and_lets_requests_in_flight_finish() {
    let server = RedisServer::start();
    let (up, upstream) = gated_upstream().await;
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin_arg = admin.to_string();
    let grace = ["--shutdown-grace-ms", "20000", "--admin-listen", &admin_arg];
    let mut proxy = ProxyProcess::start_with(&upstream, &server.url(), "1000", &grace);
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move { fetch(addr, "/gated").await });
    until_calls(&up, 1, "the proxy").await;
    assert_eq!(fetch(admin, "/readyz").await.0, StatusCode::OK);

    proxy.terminate();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "the proxy waits for its request in flight"
    );
    // Not ready while it drains.
    let (status, _, body) = fetch(admin, "/readyz").await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::SERVICE_UNAVAILABLE, &b"draining\n"[..])
    );

    up.gate.add_permits(1);
    let (status, outcome, body) = in_flight.await.unwrap();
    assert_eq!((status, outcome.as_str()), (StatusCode::OK, "leader"));
    assert_eq!(body, "answer for /gated");
    assert!(proxy.exit_status(Duration::from_secs(10)).success());
    // The answer was stored before the process left: another instance
    // serves it from Redis.
    let other = ProxyProcess::start(&upstream, &server.url());
    let (status, outcome, _) = fetch(other.addr, "/gated").await;
    assert_eq!((status, outcome.as_str()), (StatusCode::OK, "hit"));
    assert_eq!(up.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn help_lists_every_flag_and_a_bad_flag_exits_with_status_2() {
    let bin = env!("CARGO_BIN_EXE_coalesce-proxy");
    let help = Command::new(bin).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for flag in [
        "--listen",
        "--upstream",
        "--redis",
        "--ttl-ms",
        "--lease-ms",
        "--public-host",
        "--trust-forwarded",
        "--header",
        "--no-header",
        "--shutdown-grace-ms",
        "--stale-ms",
        "--no-cache-status",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
    }
    let bad = Command::new(bin)
        .args(["--upstream", "http://127.0.0.1:1", "--verbose"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--verbose"));
}

/// Fresh for 3 s (2 to 3 once `Date`'s whole seconds are counted), then
/// served stale for a minute while refreshed;
/// `answer <n>` for the n-th call, every call after the first held at the
/// gate.
async fn hot_answer(State(up): State<Upstream>) -> impl axum::response::IntoResponse {
    let n = up.calls.fetch_add(1, Ordering::SeqCst) + 1;
    if n > 1 {
        up.gate.acquire().await.unwrap().forget();
    }
    (
        [("cache-control", "max-age=3, stale-while-revalidate=60")],
        format!("answer {n}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresher_killed_mid_refresh_is_taken_over_within_a_lease() {
    let server = RedisServer::start();
    let (up, upstream) = upstream_with(hot_answer).await;
    // Freshness from the upstream (no --ttl-ms), 1 s leases.
    let args = ["--lease-ms", "1000"];
    let mut refresher = ProxyProcess::start_args(&upstream, &server.url(), &args);
    let other = ProxyProcess::start_args(&upstream, &server.url(), &args);
    assert_eq!(fetch(refresher.addr, "/hot").await.2, "answer 1");
    assert_eq!(fetch(other.addr, "/hot").await.1, "hit");

    // Past 3 s the answer is stale for sure.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (status, outcome, body) = fetch(refresher.addr, "/hot").await;
    assert_eq!(
        (status, outcome.as_str(), &body[..]),
        (StatusCode::OK, "stale", &b"answer 1"[..])
    );
    until_calls(&up, 2, "the refresh").await;
    refresher.kill();

    // The other proxy serves the stale answer at once; its refresh waits
    // on the dead one's lease, then takes it over.
    let (_, outcome, body) = fetch(other.addr, "/hot").await;
    assert_eq!((outcome.as_str(), &body[..]), ("stale", &b"answer 1"[..]));
    up.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    let killed = Instant::now();
    loop {
        let (status, outcome, body) = fetch(other.addr, "/hot").await;
        assert_eq!(status, StatusCode::OK);
        if outcome == "hit" {
            assert_eq!(body, "answer 3");
            break;
        }
        assert_eq!((outcome.as_str(), &body[..]), ("stale", &b"answer 1"[..]));
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "never taken over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        up.calls.load(Ordering::SeqCst),
        3,
        "the dead refresh and one takeover"
    );
}

/// Answers `<path> <n>`, `n` the upstream's call count; a write is `204`.
async fn counted_answer(State(up): State<Upstream>, req: Request<Body>) -> (StatusCode, String) {
    let n = up.calls.fetch_add(1, Ordering::SeqCst) + 1;
    if req.method() == http::Method::GET {
        (StatusCode::OK, format!("{} {n}", req.uri().path()))
    } else {
        (StatusCode::NO_CONTENT, String::new())
    }
}

/// Sends `req` through a proxy: its status, bounded.
async fn send(req: Request<http_body_util::Full<Bytes>>) -> StatusCode {
    let client = Client::builder(TokioExecutor::new()).build_http();
    tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("no answer within 10 s")
        .expect("the proxy did not answer")
        .status()
}

/// Asks `addr` for `path` until its body is no longer `old` (at most a
/// second).
async fn until_changed(addr: SocketAddr, path: &str, old: &Bytes) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while fetch(addr, path).await.2 == *old {
        assert!(
            Instant::now() < deadline,
            "{addr} still answered {old:?} a second after the purge"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_through_one_proxy_process_reaches_every_other_process() {
    let redis = RedisServer::start();
    let (_up, upstream) = upstream_with(counted_answer).await;
    let dir = std::env::temp_dir().join(format!("coalesce-purge-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "process-purge-token-0123\n").unwrap();
    let token = ["--purge-token-file", token_file.to_str().unwrap()];
    let proxies: Vec<ProxyProcess> = (0..3)
        .map(|_| ProxyProcess::start_with(&upstream, &redis.url(), "1000", &token))
        .collect();
    let warm = |path: &'static str| {
        let proxies = &proxies;
        async move {
            let first = fetch(proxies[0].addr, path).await;
            assert_eq!(first.1, "leader");
            for proxy in &proxies[1..] {
                // Each process keeps it in its near cache from here on.
                let again = fetch(proxy.addr, path).await;
                assert_eq!((again.1.as_str(), &again.2), ("hit", &first.2));
                assert_eq!(fetch(proxy.addr, path).await.1, "hit");
            }
            first.2
        }
    };

    // PURGE through process 0: processes 1 and 2 drop it too.
    let old = warm("/p").await;
    let purge = Request::builder()
        .method("PURGE")
        .uri(format!("http://{}/p", proxies[0].addr))
        .header(header::AUTHORIZATION, "Bearer process-purge-token-0123")
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(send(purge).await, StatusCode::OK);
    for proxy in &proxies[1..] {
        until_changed(proxy.addr, "/p", &old).await;
    }

    // A write through process 1: processes 0 and 2 drop the URL's answer.
    let old = warm("/q").await;
    let put = Request::put(format!("http://{}/q", proxies[1].addr))
        .body(http_body_util::Full::new(Bytes::from_static(b"new")))
        .unwrap();
    assert_eq!(send(put).await, StatusCode::NO_CONTENT);
    for proxy in [&proxies[0], &proxies[2]] {
        until_changed(proxy.addr, "/q", &old).await;
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_processes_on_a_redis_cluster_make_one_upstream_call_per_burst() {
    const EACH: usize = 20;
    let cluster = RedisCluster::start();
    let nodes = cluster.urls()[..2].join(",");
    let (up, upstream) = gated_upstream().await;
    let proxies: Vec<ProxyProcess> = (0..2)
        .map(|_| {
            ProxyProcess::start_on(
                &upstream,
                &["--redis-cluster", &nodes],
                &["--ttl-ms", "60000"],
            )
        })
        .collect();
    let requests: Vec<_> = proxies
        .iter()
        .flat_map(|proxy| (0..EACH).map(move |_| tokio::spawn(fetch(proxy.addr, "/clustered"))))
        .collect();
    until_calls(&up, 1, "the burst's leader").await;
    // Let the other process's requests reach the flight under way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    up.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    for request in requests {
        let (status, _, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "answer for /clustered");
    }
    assert_eq!(
        up.calls.load(Ordering::SeqCst),
        1,
        "one upstream call for both processes"
    );
    assert_eq!(fetch(proxies[1].addr, "/clustered").await.1, "hit");
}

#[tokio::test]
async fn sighup_reloads_the_listeners_certificate() {
    let ca = support::Ca::new();
    let dir = support::scratch("sighup");
    let first = ca.issue();
    let (cert, key) = support::write_leaf(&dir, &first);
    // The upstream is never asked: only handshakes are made.
    let upstream: Uri = "http://127.0.0.1:9".parse().unwrap();
    let proxy = ProxyProcess::start_on(
        &upstream,
        &[],
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let presented = || async {
        let config = ca.client_config(&[b"h2"]);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    assert_eq!(presented().await, first.der);
    let second = ca.issue();
    support::write_leaf(&dir, &second);
    let sent = Command::new("kill")
        .args(["-HUP", &proxy.child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(sent, "kill -HUP failed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while presented().await != second.der {
        assert!(
            Instant::now() < deadline,
            "SIGHUP never reloaded the certificate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn json_logs_carry_one_access_line_per_request_and_never_its_query() {
    let (up, upstream) = gated_upstream().await;
    up.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    let dir = support::scratch("access-log");
    let path = dir.join("proxy.log");
    let file = std::fs::File::create(&path).unwrap();
    let mut proxy = ProxyProcess::start_logging(
        &upstream,
        &[],
        &["--ttl-ms", "60000", "--log-format", "json", "--access-log"],
        Stdio::from(file),
    );
    let addr = proxy.addr;
    assert_eq!(fetch(addr, "/gated?token=secret").await.1, "leader");
    assert_eq!(fetch(addr, "/gated?token=secret").await.1, "hit");
    assert_eq!(fetch(addr, "/gated?token=other").await.1, "leader");
    proxy.terminate();
    assert!(proxy.exit_status(Duration::from_secs(10)).success());

    let log = std::fs::read_to_string(&path).unwrap();
    assert!(!log.contains("secret"), "a query reached the log: {log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .filter(|line: &serde_json::Value| line["target"] == "coalesce_proxy::access")
        .collect();
    assert_eq!(lines.len(), 3, "{log}");
    let body = "answer for /gated".len() as u64;
    for (line, outcome) in lines.iter().zip(["leader", "hit", "leader"]) {
        let fields = &line["fields"];
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(fields["method"], "GET", "{line}");
        assert_eq!(fields["path"], "/gated", "{line}");
        assert_eq!(fields["status"], 200, "{line}");
        assert_eq!(fields["outcome"], outcome, "{line}");
        assert_eq!(fields["bytes"], body, "{line}");
        assert_eq!(fields["end"], "complete", "{line}");
        assert!(
            fields["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{line}"
        );
        let key = fields["key"].as_str().unwrap_or_default();
        assert!(
            key.len() == 16 && key.bytes().all(|b| b.is_ascii_hexdigit()),
            "{line}"
        );
    }
    // The key's fingerprint names the request's key: the same for the hit
    // as for its leader, another for another query.
    let key = |i: usize| lines[i]["fields"]["key"].clone();
    assert_eq!(key(0), key(1));
    assert_ne!(key(0), key(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_healthcheck_command_says_whether_the_admin_listener_answers() {
    let (_, upstream) = gated_upstream().await;
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin_arg = admin.to_string();
    let proxy = ProxyProcess::start_on(&upstream, &[], &["--admin-listen", &admin_arg]);
    let bin = env!("CARGO_BIN_EXE_coalesce-proxy");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(admin).is_err() {
        assert!(
            Instant::now() < deadline,
            "the admin listener never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let healthy = Command::new(bin)
        .args(["healthcheck", &admin_arg])
        .status()
        .unwrap();
    assert!(healthy.success());
    drop(proxy);
    let gone = Command::new(bin)
        .args(["healthcheck", &admin_arg])
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("cannot connect"));
    let bad = Command::new(bin)
        .args(["healthcheck", "nowhere"])
        .status()
        .unwrap();
    assert_eq!(bad.code(), Some(2));
}

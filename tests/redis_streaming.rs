//! Streaming fan-out across instances on a real Redis (and a real cluster):
//! an instance waiting on another's lease reads the answer while the
//! leading instance is still reading it from the origin; one origin call
//! for the whole fleet; a body that fails, or a leading instance that
//! stops, fails the waiting instances' bodies rather than end them short
//! or leave them hanging.
//!
//! Each instance is a layer with its own `RedisBackend`, served over TCP.

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::redis::{RedisCluster, RedisServer};
use support::tap::{
    answer, both_ended_whole, cacheable, client, read_at_least, request, rest, serve, with_tag,
    Origin,
};
use support::until;
use tower_coalesce::{CoalesceConfig, CoalesceLayer, RedisBackend};

/// One name for the service, whichever instance a request reaches (the
/// default key holds the authority).
const HOST: &[(&str, &str)] = &[("host", "shop.example")];

fn config() -> CoalesceConfig {
    CoalesceConfig::new()
        .ttl(Duration::from_secs(60))
        .lease(Duration::from_secs(1))
        .outcome_header("x-coalesce")
}

/// Two instances of the service on `backends`, behind one origin.
async fn fleet(origin: &Origin, backends: [RedisBackend; 2]) -> [(CoalesceLayer, SocketAddr); 2] {
    let mut fleet = Vec::new();
    for backend in backends {
        let layer = CoalesceLayer::new(config().backend(backend));
        let addr = serve(origin, &layer).await;
        fleet.push((layer, addr));
    }
    fleet.try_into().unwrap_or_else(|_| unreachable!())
}

/// A leads a 4 MiB answer; B, waiting on its lease, reads the first bytes
/// while the origin still holds the rest, then every byte.
async fn b_reads_a_s_answer_as_it_arrives(backends: [RedisBackend; 2]) {
    const LEN: usize = 4 << 20;
    let mut origin = Origin::new(&cacheable(LEN));
    let [(a, a_addr), (b, b_addr)] = fleet(&origin, backends).await;
    let client = client();
    let expected = answer(LEN);

    let leading = request(&client, a_addr, HOST).await;
    let tap = origin.tap().await;
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { request(&client, b_addr, HOST).await }
    });
    until(&b, "B waiting on A's lease", |s| s.remote_waits == 1).await;
    // More than a batch: published at once.
    tap.send(&expected[..100_000]).await;
    let mut waiting = waiting.await.unwrap();
    assert_eq!(waiting.headers()["x-coalesce"], "follower");
    assert_eq!(
        waiting.headers()["content-length"],
        LEN.to_string().as_str()
    );
    // B has A's first bytes while the origin holds the rest.
    let first = read_at_least(waiting.body_mut(), 100_000).await;
    assert!(first == expected[..first.len()]);

    for chunk in expected[100_000..].chunks(64 << 10) {
        tap.send(chunk).await;
    }
    drop(tap);
    both_ended_whole(&origin, (&a, leading), (&b, waiting), first, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_instance_reads_the_answer_while_the_leading_instance_reads_it() {
    let server = RedisServer::start();
    let backends = [
        RedisBackend::connect(server.url()).await.unwrap(),
        RedisBackend::connect(server.url()).await.unwrap(),
    ];
    b_reads_a_s_answer_as_it_arrives(backends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_waiting_instance_reads_the_answer_while_it_arrives() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let backends = [
        RedisBackend::connect_cluster(cluster.urls()).await.unwrap(),
        RedisBackend::connect_cluster(cluster.urls()).await.unwrap(),
    ];
    b_reads_a_s_answer_as_it_arrives(backends).await;
}

/// Two instances on one Redis; A leads a 1 MiB answer, B waits on A's lease
/// and has read its first 100,000 bytes (`first`): what the failure tests
/// start from.
struct Midway {
    _server: RedisServer,
    origin: Origin,
    a: CoalesceLayer,
    b: CoalesceLayer,
    b_addr: SocketAddr,
    expected: Vec<u8>,
    leading: http::Response<hyper::body::Incoming>,
    tap: support::tap::Tap,
    waiting: http::Response<hyper::body::Incoming>,
    first: Vec<u8>,
}

/// [`Midway`], the answer with this `ETag`.
async fn midway(tag: &str) -> Midway {
    const LEN: usize = 1 << 20;
    let server = RedisServer::start();
    let mut origin = Origin::new(&with_tag(LEN, tag));
    let backends = [
        RedisBackend::connect(server.url()).await.unwrap(),
        RedisBackend::connect(server.url()).await.unwrap(),
    ];
    let [(a, a_addr), (b, b_addr)] = fleet(&origin, backends).await;
    let client = client();
    let expected = answer(LEN);
    let leading = request(&client, a_addr, HOST).await;
    let tap = origin.tap().await;
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { request(&client, b_addr, HOST).await }
    });
    until(&b, "B waiting on A's lease", |s| s.remote_waits == 1).await;
    tap.send(&expected[..100_000]).await;
    let mut waiting = waiting.await.unwrap();
    let first = read_at_least(waiting.body_mut(), 100_000).await;
    Midway {
        _server: server,
        origin,
        a,
        b,
        b_addr,
        expected,
        leading,
        tap,
        waiting,
        first,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_failing_in_the_leading_instance_fails_the_waiting_instance_too() {
    let Midway {
        _server,
        mut origin,
        a,
        b,
        b_addr,
        expected,
        leading,
        tap,
        waiting,
        ..
    } = midway("\"v1\"").await;
    tap.fail().await;
    assert!(rest(leading).await.is_err());
    assert!(
        rest(waiting).await.is_err(),
        "a failed answer must not end like a whole one in another instance"
    );
    until(&a, "A's flight to end", |_| a.flights_in_progress() == 0).await;
    assert_eq!(a.stats().stored + b.stats().stored, 0);
    // The next request, on B, makes a new flight, and succeeds. On a new
    // connection: B closed the failed body's, and a pooled one could be
    // picked before the client has seen it closed (`IncompleteMessage`).
    let next = tokio::spawn(async move { rest(request(&client(), b_addr, HOST).await).await });
    let tap = origin.tap().await;
    for chunk in expected.chunks(256 << 10) {
        tap.send(chunk).await;
    }
    drop(tap);
    assert!(next.await.unwrap().unwrap() == expected[..]);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leading_instance_that_stops_mid_body_fails_the_waiting_instance_within_a_lease() {
    // A weak tag: the rest may not be asked for with a range (RFC 9110
    // §13.1.5), so nothing can finish B's answer.
    let Midway {
        _server,
        a,
        tap,
        waiting,
        leading: _leading,
        ..
    } = midway("W/\"v1\"").await;
    // A stops at once, its flight unfinished, the origin's connection open.
    a.shutdown(Duration::ZERO).await;
    let started = tokio::time::Instant::now();
    assert!(rest(waiting).await.is_err(), "B's body fails");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "within about a lease (1 s), not {:?}",
        started.elapsed()
    );
    drop(tap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leading_instance_that_stops_mid_body_is_resumed_by_the_waiting_instance() {
    let Midway {
        _server,
        mut origin,
        a,
        b,
        tap,
        waiting,
        leading: _leading,
        expected,
        first,
        ..
    } = midway("\"v1\"").await;
    // A stops at once, its flight unfinished; B has the first 100,000
    // bytes, and the answer has a strong tag.
    a.shutdown(Duration::ZERO).await;
    drop(tap);
    // B asks the origin for the rest, from the byte it has, of the same
    // representation only.
    let rest_tap = origin.tap().await;
    assert_eq!(origin.ranges(), ["bytes=100000-"]);
    for chunk in expected[100_000..].chunks(128 << 10) {
        rest_tap.send(chunk).await;
    }
    drop(rest_tap);
    let mut whole = first;
    whole.extend_from_slice(&rest(waiting).await.expect("B's body whole, not failed"));
    assert!(
        whole == expected,
        "B's callers got every byte once, in order"
    );
    assert_eq!(origin.calls(), 2, "the first call, and the rest once");
    assert_eq!(b.stats().resumes, 1);
    until(&b, "B's flight to end", |_| b.flights_in_progress() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_instance_holds_no_slot_of_a_concurrency_limit_while_it_reads_the_stream() {
    use bytes::Bytes;
    use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
    use std::sync::{Arc, Mutex};
    use tower::{Layer, ServiceExt};
    type Body = UnsyncBoxBody<Bytes, tower_coalesce::BoxError>;
    type Chunk = Result<http_body::Frame<Bytes>, tower_coalesce::BoxError>;

    // `/report` streams what the test sends; anything else answers at once.
    const LEN: usize = 1 << 20;
    let feed: Arc<Mutex<Option<tokio::sync::mpsc::Sender<Chunk>>>> = Arc::default();
    let fed = feed.clone();
    let origin = tower::service_fn(move |req: http::Request<Full<Bytes>>| {
        let fed = fed.clone();
        async move {
            let res = http::Response::builder()
                .header("cache-control", "max-age=60")
                .header("etag", "\"v1\"");
            if req.uri().path() != "/report" {
                let body = Full::new(Bytes::from_static(b"other")).map_err(|e| match e {});
                return Ok::<_, tower_coalesce::BoxError>(
                    res.body(UnsyncBoxBody::new(body)).unwrap(),
                );
            }
            let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(1);
            *fed.lock().unwrap() = Some(tx);
            let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            });
            let body: Body = UnsyncBoxBody::new(StreamBody::new(chunks));
            Ok(res.header("content-length", LEN).body(body).unwrap())
        }
    });
    let server = RedisServer::start();
    let a =
        CoalesceLayer::new(config().backend(RedisBackend::connect(server.url()).await.unwrap()));
    let b =
        CoalesceLayer::new(config().backend(RedisBackend::connect(server.url()).await.unwrap()));
    let a_svc = a.layer(origin.clone());
    // B's service admits one call at a time.
    let b_svc = b.layer(tower::limit::ConcurrencyLimit::new(origin, 1));
    let expected = answer(LEN);

    let leading = tokio::spawn(a_svc.oneshot(support::get("/report")));
    until(&a, "A at the origin", |_| feed.lock().unwrap().is_some()).await;
    let waiting = tokio::spawn(b_svc.clone().oneshot(support::get("/report")));
    until(&b, "B waiting on A's lease", |s| s.remote_waits == 1).await;
    let tx = feed.lock().unwrap().take().unwrap();
    tx.send(Ok(http_body::Frame::data(Bytes::copy_from_slice(
        &expected[..100_000],
    ))))
    .await
    .unwrap();
    let mut waiting = waiting.await.unwrap().unwrap().into_body();
    let mut first = Vec::new();
    while first.len() < 100_000 {
        let frame = waiting.frame().await.unwrap().unwrap();
        first.extend_from_slice(&frame.into_data().unwrap());
    }
    // B's flight reads A's answer from Redis and calls nothing: another
    // request on B reaches the origin meanwhile.
    let other = b_svc.clone().oneshot(support::get("/other"));
    let other = tokio::time::timeout(std::time::Duration::from_secs(5), other)
        .await
        .expect("B's one slot is free while its flight reads the stream")
        .unwrap();
    assert_eq!(
        other.into_body().collect().await.unwrap().to_bytes(),
        "other"
    );
    for chunk in expected[100_000..].chunks(256 << 10) {
        let frame = http_body::Frame::data(Bytes::copy_from_slice(chunk));
        tx.send(Ok(frame)).await.unwrap();
    }
    drop(tx);
    first.extend_from_slice(&waiting.collect().await.unwrap().to_bytes());
    assert!(first == expected);
    let leading = leading.await.unwrap().unwrap();
    assert!(leading.into_body().collect().await.unwrap().to_bytes() == expected[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_stale_answer_that_may_stand_in_no_instance_streams_a_head_before_the_body_is_whole()
{
    const LEN: usize = 200_000;
    let server = RedisServer::start();
    let mut origin = Origin::new(&[("content-length", LEN.to_string())]);
    let mut fleet = Vec::new();
    for _ in 0..2 {
        let backend = RedisBackend::connect(server.url()).await.unwrap();
        let config = config()
            .ttl(Duration::from_millis(300))
            .stale_if_error(Duration::from_secs(60))
            .backend(backend);
        let layer = CoalesceLayer::new(config);
        let addr = serve(&origin, &layer).await;
        fleet.push((layer, addr));
    }
    let [(a, a_addr), (b, b_addr)] = <[_; 2]>::try_from(fleet).unwrap_or_else(|_| unreachable!());
    let expected = answer(LEN);
    let client = client();
    let first = tokio::spawn({
        let client = client.clone();
        async move { rest(request(&client, a_addr, HOST).await).await }
    });
    let tap = origin.tap().await;
    tap.send(&expected).await;
    drop(tap);
    assert!(first.await.unwrap().unwrap() == expected[..]);
    until(&a, "the store", |s| s.stored == 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Stale now: A leads the flight that refetches it, B waits on A's
    // lease, and the origin's body fails past a batch's worth of bytes.
    let outcome_and_body = |addr: SocketAddr| {
        let client = client.clone();
        async move {
            let res = request(&client, addr, HOST).await;
            let outcome = res.headers()["x-coalesce"].to_str().unwrap().to_owned();
            (outcome, res.status(), rest(res).await)
        }
    };
    let leading = tokio::spawn(outcome_and_body(a_addr));
    let tap = origin.tap().await;
    let waiting = tokio::spawn(outcome_and_body(b_addr));
    until(&b, "B waiting on A's lease", |s| s.remote_waits == 1).await;
    tap.send(&expected[..100_000]).await;
    tap.fail().await;
    // Neither instance sent a head it could not finish: each caller has
    // the stale answer, whole.
    for caller in [leading, waiting] {
        let (outcome, status, body) = caller.await.unwrap();
        assert_eq!((outcome.as_str(), status), ("stale", http::StatusCode::OK));
        assert!(body.expect("the stale answer, whole") == expected[..]);
    }
    assert_eq!((a.stats().stale_on_error, b.stats().stale), (1, 1));
    assert_eq!(origin.calls(), 2);
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_of_a_streamed_answer_reach_a_waiting_instances_callers() {
    use tower::{Layer, ServiceExt};
    let server = RedisServer::start();
    let mut origin = Origin::new(&[("cache-control", "max-age=60".into())]);
    let a =
        CoalesceLayer::new(config().backend(RedisBackend::connect(server.url()).await.unwrap()));
    let b =
        CoalesceLayer::new(config().backend(RedisBackend::connect(server.url()).await.unwrap()));
    let (a_svc, b_svc) = (
        a.layer(origin.service.clone()),
        b.layer(origin.service.clone()),
    );
    let get = || {
        http::Request::get("http://shop.example/report")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let expected = answer(100_000);

    let leading = tokio::spawn(a_svc.oneshot(get()));
    let tap = origin.tap().await;
    let waiting = tokio::spawn(b_svc.oneshot(get()));
    until(&b, "B waiting on A's lease", |s| s.remote_waits == 1).await;
    // More than a batch: published at once, and B's caller has its head.
    tap.send(&expected).await;
    let waiting = waiting.await.unwrap().unwrap();
    assert_eq!(
        waiting.extensions().get::<tower_coalesce::Outcome>(),
        Some(&tower_coalesce::Outcome::Follower)
    );
    let leading = leading.await.unwrap().unwrap();
    let reading = [leading, waiting]
        .map(|res| tokio::spawn(http_body_util::BodyExt::collect(res.into_body())));
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    trailers.insert("x-checksum", "42".parse().unwrap());
    tap.trailers(trailers).await;
    for read in reading {
        let read = read.await.unwrap().unwrap();
        let trailers = read.trailers().expect("trailers, in each instance").clone();
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-checksum"], "42");
        assert!(read.to_bytes() == expected[..]);
    }
    until(&a, "A's flight to end", |_| a.flights_in_progress() == 0).await;
    until(&b, "B's flight to end", |_| b.flights_in_progress() == 0).await;
    assert_eq!(a.stats().stored, 1);
    assert_eq!(origin.calls(), 1);
}

/// The bytes Redis holds in the pieces of flights' streams.
fn stream_bytes(server: &RedisServer) -> u64 {
    let mut conn = server.conn();
    let pieces: Vec<String> = redis::cmd("KEYS").arg("*:b:*").query(&mut conn).unwrap();
    pieces
        .iter()
        .map(|piece| {
            redis::cmd("STRLEN")
                .arg(piece)
                .query::<u64>(&mut conn)
                .unwrap()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_a_window_of_an_answer_too_large_to_store_and_a_late_instance_calls_the_origin()
{
    const LEN: usize = 6 << 20;
    const WINDOW: usize = 1 << 20;
    const STEP: usize = 256 << 10;
    let server = RedisServer::start();
    let mut origin = Origin::new(&cacheable(LEN));
    let mut fleet = Vec::new();
    for _ in 0..3 {
        let backend = RedisBackend::connect(server.url()).await.unwrap();
        let layer = CoalesceLayer::new(config().stream_window(WINDOW).backend(backend));
        let addr = serve(&origin, &layer).await;
        fleet.push((layer, addr));
    }
    let layers: Vec<_> = fleet.iter().map(|(layer, _)| layer.clone()).collect();
    let _stats = support::StatsOnPanic(&layers);
    let [(a, a_addr), (b, b_addr), (c, c_addr)] =
        <[_; 3]>::try_from(fleet).unwrap_or_else(|_| unreachable!());
    let client = client();
    let expected = answer(LEN);

    let mut leading = request(&client, a_addr, HOST).await;
    let tap = origin.tap().await;
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { request(&client, b_addr, HOST).await }
    });
    until(&b, "B waiting on A's lease", |s| s.remote_waits == 1).await;
    // The callers in both instances read each step before the next is sent,
    // so none falls behind a window; Redis must hold no more than the
    // window and the piece being written, however much has gone through.
    let mut steps = expected.chunks(STEP);
    tap.send(steps.next().unwrap()).await;
    let mut waiting = waiting.await.unwrap();
    let (mut a_got, mut b_got) = (Vec::new(), Vec::new());
    let mut late = None;
    let mut held_most = 0;
    let mut sent = STEP;
    loop {
        a_got.extend(read_at_least(leading.body_mut(), sent - a_got.len()).await);
        b_got.extend(read_at_least(waiting.body_mut(), sent - b_got.len()).await);
        held_most = held_most.max(stream_bytes(&server));
        // Past the first piece, C starts to wait: it cannot follow the
        // stream from its first byte.
        if sent == 3 << 20 {
            let client = client.clone();
            late = Some(tokio::spawn(
                async move { request(&client, c_addr, HOST).await },
            ));
            until(&c, "C waiting on A's lease", |s| s.remote_waits == 1).await;
        }
        let Some(step) = steps.next() else { break };
        tap.send(step).await;
        sent += step.len();
    }
    drop(tap);
    assert!(held_most > 0, "the stream went through Redis");
    assert!(
        held_most <= (WINDOW + (1 << 20)) as u64,
        "Redis held {held_most} bytes of one flight's stream"
    );
    for (got, res) in [(a_got, leading), (b_got, waiting)] {
        let mut whole = got;
        whole.extend_from_slice(&rest(res).await.expect("a whole body"));
        assert!(whole == expected, "every byte once, in order");
    }
    // Both have read A's stream to its end (their clients stop at the
    // length; their flights at the stream's end).
    until(&a, "A's flight to end", |_| a.flights_in_progress() == 0).await;
    until(&b, "B's flight to end", |_| b.flights_in_progress() == 0).await;
    // C did not follow the stream: once A's flight was over, it called the
    // origin itself, once, and its caller gets the whole answer from there.
    let tap = origin.tap().await;
    let mut late = late.unwrap().await.unwrap();
    // As the completion says (`pass`), or as the flight after A's if C
    // took the lease first (`leader`): either way not A's stream.
    let outcome = &late.headers()["x-coalesce"];
    assert!(outcome == "pass" || outcome == "leader", "{outcome:?}");
    let mut c_got = Vec::new();
    for (i, step) in expected.chunks(STEP).enumerate() {
        tap.send(step).await;
        c_got.extend(read_at_least(late.body_mut(), (i + 1) * STEP - c_got.len()).await);
    }
    drop(tap);
    c_got.extend_from_slice(&rest(late).await.unwrap());
    assert!(c_got == expected);
    assert_eq!(origin.calls(), 2);
    assert_eq!(a.stats().stored + b.stats().stored + c.stats().stored, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leading_instances_caller_going_away_mid_body_holds_no_other_instance_back() {
    let Midway {
        _server,
        origin,
        a,
        b,
        expected,
        leading,
        tap,
        waiting,
        first,
        ..
    } = midway("\"v1\"").await;
    // The caller in the leading instance goes away mid-body: its flight
    // reads the origin on, for B and for the store.
    drop(leading);
    for chunk in expected[100_000..].chunks(64 << 10) {
        tap.send(chunk).await;
    }
    drop(tap);
    let mut whole = first;
    whole.extend_from_slice(&rest(waiting).await.expect("B's body whole"));
    assert!(whole == expected, "every byte once, in order");
    until(&a, "A's flight to end", |_| a.flights_in_progress() == 0).await;
    until(&b, "B's flight to end", |_| b.flights_in_progress() == 0).await;
    assert_eq!(a.stats().stored, 1, "whole and small enough: stored");
    assert_eq!(origin.calls(), 1);
}

/// An origin for `/report` whose first `with_head` bytes are there with its
/// head (as when they came in the same read), and whose rest comes as the
/// test sends it through the sender it leaves in `feed`; with a
/// `Content-Length` of `len` if given. With a `gate`, each call sends its
/// head once it takes a permit.
fn origin_with_bytes_at_the_head(
    with_head: bytes::Bytes,
    len: Option<usize>,
    feed: Feed,
    gate: Option<std::sync::Arc<tokio::sync::Semaphore>>,
) -> impl tower::Service<
    http::Request<http_body_util::Full<bytes::Bytes>>,
    Response = http::Response<ReportBody>,
    Error = tower_coalesce::BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(
        move |_req: http::Request<http_body_util::Full<bytes::Bytes>>| {
            let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(1);
            *feed.lock().unwrap() = Some(tx);
            let first = futures_util::stream::iter(
                (!with_head.is_empty()).then(|| Ok(http_body::Frame::data(with_head.clone()))),
            );
            let rest = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            });
            let body = ReportBody::new(http_body_util::StreamBody::new(
                futures_util::StreamExt::chain(first, rest),
            ));
            let mut res = http::Response::builder().header("cache-control", "max-age=60");
            if let Some(len) = len {
                res = res.header("content-length", len);
            }
            let gate = gate.clone();
            async move {
                if let Some(gate) = gate {
                    gate.acquire().await.unwrap().forget();
                }
                Ok(res.body(body).unwrap())
            }
        },
    )
}

type Chunk = Result<http_body::Frame<bytes::Bytes>, tower_coalesce::BoxError>;
type Feed = std::sync::Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Sender<Chunk>>>>;

/// Two instances, A and B, each a layer with its own connection to `server`.
async fn two_instances(server: &RedisServer) -> [CoalesceLayer; 2] {
    let a = RedisBackend::connect(server.url()).await.unwrap();
    let b = RedisBackend::connect(server.url()).await.unwrap();
    [a, b].map(|backend| CoalesceLayer::new(config().backend(backend)))
}

/// Sends `rest` as the origin's body, in 64 KiB chunks, and ends it.
async fn send_rest(feed: &Feed, rest: &[u8]) {
    let tx = feed.lock().unwrap().take().unwrap();
    for chunk in rest.chunks(64 << 10) {
        let frame = http_body::Frame::data(bytes::Bytes::copy_from_slice(chunk));
        tx.send(Ok(frame)).await.unwrap();
    }
}

/// Each named response's body is `expected`, whole.
async fn every_byte<B>(responses: [(&str, http::Response<B>); 2], expected: &[u8])
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    for (name, res) in responses {
        let body = res.into_body().collect().await;
        let body = body.unwrap_or_else(|e| panic!("{name}'s body failed: {e}"));
        assert!(body.to_bytes() == expected, "{name} got every byte");
    }
}
type ReportBody =
    http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, tower_coalesce::BoxError>;
type Called = tokio::task::JoinHandle<
    Result<http::Response<tower_coalesce::CoalesceBody<ReportBody>>, tower_coalesce::BoxError>,
>;

/// Two instances on a Redis of their own in front of
/// [`origin_with_bytes_at_the_head`]`(with_head, len, feed, gate)`: A's
/// call for `/report` at the origin, then B's waiting on A's lease.
struct ALeadsBWaits {
    _server: RedisServer,
    b: CoalesceLayer,
    leading: Called,
    waiting: Called,
}

async fn a_leads_b_waits(
    with_head: bytes::Bytes,
    len: Option<usize>,
    feed: &Feed,
    gate: Option<std::sync::Arc<tokio::sync::Semaphore>>,
) -> ALeadsBWaits {
    use tower::{Layer, ServiceExt};
    let origin = origin_with_bytes_at_the_head(with_head, len, std::sync::Arc::clone(feed), gate);
    let server = RedisServer::start();
    let [a, b] = two_instances(&server).await;
    let (a_svc, b_svc) = (a.layer(origin.clone()), b.layer(origin));
    let leading = tokio::spawn(a_svc.oneshot(support::get("/report")));
    until(&a, "A at the origin", |_| feed.lock().unwrap().is_some()).await;
    let waiting = tokio::spawn(b_svc.oneshot(support::get("/report")));
    until(&b, "B waiting on A's lease", |s| s.remote_waits == 1).await;
    ALeadsBWaits {
        _server: server,
        b,
        leading,
        waiting,
    }
}

/// A leads an answer whose first bytes come with its head; B waits on A's
/// lease and must get every byte, those first ones included.
async fn bytes_with_the_head_reach_the_waiting_instance(declared: bool) {
    const LEN: usize = 300_000;
    let expected = answer(LEN);
    let feed = std::sync::Arc::default();
    let with_head = bytes::Bytes::copy_from_slice(&expected[..1000]);
    let ALeadsBWaits {
        _server,
        b,
        leading,
        waiting,
    } = a_leads_b_waits(with_head, declared.then_some(LEN), &feed, None).await;
    send_rest(&feed, &expected[1000..]).await;
    let (leading, waiting) = (
        leading.await.unwrap().unwrap(),
        waiting.await.unwrap().unwrap(),
    );
    every_byte([("A", leading), ("B", waiting)], &expected).await;
    assert_eq!(b.stats().remote_waits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_came_with_the_head_reach_the_waiting_instance_with_a_length() {
    bytes_with_the_head_reach_the_waiting_instance(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_came_with_the_head_reach_the_waiting_instance_without_a_length() {
    bytes_with_the_head_reach_the_waiting_instance(false).await;
}

/// An answer longer than one write's batch cannot travel in its completion
/// message: its stream opens with its head, so a waiting instance's callers
/// have the head before the origin has sent a byte of the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_instance_has_a_long_answers_head_before_its_first_byte() {
    const LEN: usize = 1 << 20;
    let expected = answer(LEN);
    let feed = std::sync::Arc::default();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let ALeadsBWaits {
        _server,
        b,
        leading,
        waiting,
    } = a_leads_b_waits(bytes::Bytes::new(), Some(LEN), &feed, Some(gate.clone())).await;
    // The head, and not a byte of the body.
    gate.add_permits(1);
    let waiting = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("B's caller has the head while the origin holds the whole body")
        .unwrap()
        .unwrap();
    assert_eq!(
        waiting.headers()["content-length"],
        LEN.to_string().as_str()
    );
    send_rest(&feed, &expected).await;
    let leading = leading.await.unwrap().unwrap();
    every_byte([("A", leading), ("B", waiting)], &expected).await;
    assert_eq!(b.stats().remote_waits, 1);
}

//! A Redis that answers late for a moment in the middle of a streamed
//! answer — as a busy one does, with a thousand connections on two cores —
//! costs the instances following the stream latency, never the answer:
//! the reads and the writes given up at the backend timeout are tried
//! again, and the waiting instance's caller gets every byte, in order, of
//! one origin call.
//!
//! Each instance is a layer with its own `RedisBackend`, served over TCP;
//! the slow one reaches Redis through a relay that holds its replies back.

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::redis::{RedisServer, Relay};
use support::tap::{
    answer, both_ended_whole, cacheable, client, read_at_least, request, rest, serve, Origin,
};
use support::until;
use tower_coalesce::{CoalesceConfig, CoalesceLayer, RedisBackend};

const HOST: &[(&str, &str)] = &[("host", "shop.example")];
const LEN: usize = 1 << 20;

fn config() -> CoalesceConfig {
    CoalesceConfig::new()
        .ttl(Duration::from_secs(60))
        .lease(Duration::from_secs(4))
        .outcome_header("x-coalesce")
}

/// Which instance reaches Redis through the relay.
#[derive(Clone, Copy)]
enum Slow {
    /// B, the waiting instance: its reads of the stream are late.
    Reader,
    /// A, the leading instance: its writes to the stream are late.
    Writer,
}

async fn instance(origin: &Origin, url: String) -> (CoalesceLayer, SocketAddr) {
    let backend = RedisBackend::connect(url).await.unwrap();
    let layer = CoalesceLayer::new(config().backend(backend));
    let addr = serve(origin, &layer).await;
    (layer, addr)
}

async fn a_slow_moment_mid_stream_costs_latency_not_the_answer(slow: Slow) {
    let server = RedisServer::start();
    let relay = Relay::start(server.port);
    let (a_url, b_url) = match slow {
        Slow::Reader => (server.url(), relay.url()),
        Slow::Writer => (relay.url(), server.url()),
    };
    let mut origin = Origin::new(&cacheable(LEN));
    let (a, a_addr) = instance(&origin, a_url).await;
    let (b, b_addr) = instance(&origin, b_url).await;
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
    assert_eq!(waiting.headers()["x-coalesce"], "follower");
    let first = read_at_least(waiting.body_mut(), 100_000).await;

    // Redis answers the slow instance 1.5 s late for 2 s: longer than any
    // single call waits (half a lease at most, and less once no call has
    // been answered lately), shorter than a lease.
    relay.delay_replies(Duration::from_millis(1_500));
    let errors_before = a.stats().backend_errors + b.stats().backend_errors;
    for chunk in expected[100_000..600_000].chunks(64 << 10) {
        tap.send(chunk).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until(&b, "a call of the slow instance to be given up", |_| {
        a.stats().backend_errors + b.stats().backend_errors > errors_before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    relay.delay_replies(Duration::ZERO);
    for chunk in expected[600_000..].chunks(64 << 10) {
        tap.send(chunk).await;
    }
    drop(tap);

    both_ended_whole(&origin, (&a, leading), (&b, waiting), first, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_the_stream_given_up_while_redis_is_slow_are_tried_again() {
    a_slow_moment_mid_stream_costs_latency_not_the_answer(Slow::Reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_the_stream_given_up_while_redis_is_slow_are_sent_again_once() {
    a_slow_moment_mid_stream_costs_latency_not_the_answer(Slow::Writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_a_body_failed_starts_a_new_flight_while_the_failed_one_ends() {
    let server = RedisServer::start();
    let relay = Relay::start(server.port);
    let mut origin = Origin::new(&cacheable(LEN));
    let (_a, a_addr) = instance(&origin, relay.url()).await;
    let expected = answer(LEN);
    let mut leading = request(&client(), a_addr, HOST).await;
    let tap = origin.tap().await;
    tap.send(&expected[..100_000]).await;
    read_at_least(leading.body_mut(), 100_000).await;

    // Redis answers late from now on: the failed flight's ending (its
    // stream's end, its lease's release) takes a while.
    relay.delay_replies(Duration::from_millis(500));
    tap.fail().await;
    assert!(rest(leading).await.is_err());
    // A request that comes once the failure is known does not join the
    // flight that failed: it gets a whole answer from a new one. (On a new
    // connection: the failed body's was closed.)
    let next = tokio::spawn(async move { rest(request(&client(), a_addr, HOST).await).await });
    let tap = origin.tap().await;
    for chunk in expected.chunks(256 << 10) {
        tap.send(chunk).await;
    }
    drop(tap);
    assert!(next.await.unwrap().expect("a whole body") == expected[..]);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_reads_its_streams_end_after_a_new_flight_opened_the_next() {
    let server = RedisServer::start();
    let relay = Relay::start(server.port);
    let mut origin = Origin::new(&cacheable(LEN));
    // Too large to store: the request after a flight makes a new one.
    let instance = |url: String| {
        let origin = &origin;
        async move {
            let backend = RedisBackend::connect(url).await.unwrap();
            let config = config().max_stored_bytes(LEN / 2).backend(backend);
            let layer = CoalesceLayer::new(config);
            let addr = serve(origin, &layer).await;
            (layer, addr)
        }
    };
    let (a, a_addr) = instance(server.url()).await;
    let (b, b_addr) = instance(relay.url()).await;
    let layers = [a.clone(), b.clone()];
    let _stats = support::StatsOnPanic(&layers);
    let expected = answer(LEN);

    let leading = request(&client(), a_addr, HOST).await;
    let tap = origin.tap().await;
    let waiting = tokio::spawn(async move { request(&client(), b_addr, HOST).await });
    until(&b, "B waiting on A's lease", |s| s.remote_waits == 1).await;
    tap.send(&expected[..100_000]).await;
    let mut waiting = waiting.await.unwrap();
    let first = read_at_least(waiting.body_mut(), 100_000).await;
    let b_rest = tokio::spawn(rest(waiting));

    // B hears of A's stream a second late from now on; A sends the rest and
    // ends its flight, and the next request on A makes a new flight, whose
    // stream takes the key's place before B has read the first one's end.
    relay.delay_replies(Duration::from_millis(1_000));
    for chunk in expected[100_000..].chunks(64 << 10) {
        tap.send(chunk).await;
    }
    drop(tap);
    assert!(rest(leading).await.unwrap() == expected[..]);
    until(&a, "A's flight to end", |_| a.flights_in_progress() == 0).await;
    let next = tokio::spawn(async move { request(&client(), a_addr, HOST).await });
    let tap = origin.tap().await;
    tap.send(&expected[..100_000]).await;
    let next = next.await.unwrap();
    assert_eq!(next.headers()["x-coalesce"], "leader");

    // B finishes the first flight's answer from what Redis still holds of
    // it, without asking the origin for the rest.
    let mut whole = first;
    whole.extend_from_slice(&b_rest.await.unwrap().expect("B's body whole"));
    assert!(whole == expected, "every byte once, in order");
    until(&b, "B's flight to end", |_| b.flights_in_progress() == 0).await;
    assert_eq!(b.stats().resumes, 0);
    assert_eq!(origin.calls(), 2);
    relay.delay_replies(Duration::ZERO);
    for chunk in expected[100_000..].chunks(256 << 10) {
        tap.send(chunk).await;
    }
    drop(tap);
    assert!(rest(next).await.unwrap() == expected[..]);
}

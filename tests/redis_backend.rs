//! `RedisBackend` against a real redis-server started by the test.

mod support;

use bytes::Bytes;
use http::StatusCode;
use std::time::Duration;
use support::redis::RedisServer;
use support::{body, echo_path, get, Origin};
use tower::{Layer, ServiceExt};
use tower_coalesce::{
    CoalesceConfig, CoalesceLayer, Completed, Completion, Key, Leases, Outcome, RedisBackend, Store,
};

async fn instance(
    server: &RedisServer,
    origin: &Origin,
) -> (
    CoalesceLayer,
    impl Clone
        + tower::Service<
            http::Request<http_body_util::Full<Bytes>>,
            Response = http::Response<tower_coalesce::CoalesceBody<http_body_util::Full<Bytes>>>,
            Error = tower_coalesce::BoxError,
        >,
) {
    let backend = RedisBackend::connect(server.url()).await.unwrap();
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .backend(backend),
    );
    let svc = layer.layer(origin.serve(echo_path));
    (layer, svc)
}

#[tokio::test]
async fn an_answer_fetched_by_one_instance_serves_another() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let (a, svc_a) = instance(&server, &origin).await;
    let (b, svc_b) = instance(&server, &origin).await;

    let res = svc_a.oneshot(get("/shared")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Leader));
    assert_eq!(a.stats().stored, 1);

    let res = svc_b.oneshot(get("/shared")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Hit));
    assert_eq!(body(res).await.unwrap(), "/shared");
    assert_eq!(
        origin.calls(),
        1,
        "the second instance never reached the origin"
    );
    assert_eq!(b.stats().backend_errors, 0);
}

#[tokio::test]
async fn redis_keys_are_namespaced_hashed_and_hash_tagged() {
    let server = RedisServer::start();
    let backend = RedisBackend::builder(server.url())
        .namespace("shop")
        .connect()
        .await
        .unwrap();
    let huge = Key::new(vec![0xffu8; 1 << 20]);
    let name = backend.value_key(&huge);
    // `<namespace>:<layout version>:{<resource hash>}:<variant hash>:v`.
    assert!(
        name.starts_with("shop:3:{") && name.ends_with(":v"),
        "{name}"
    );
    assert_eq!(
        name.len(),
        "shop:3:{".len() + 32 + "}:".len() + 32 + ":v".len()
    );
    assert_ne!(name, backend.value_key(&Key::new(vec![0xfeu8; 1 << 20])));
    // Every variant of a resource shares its hash tag (one cluster slot);
    // the variant tells them apart.
    let tag = |name: &str| name.split(['{', '}']).nth(1).unwrap().to_owned();
    let variant = huge.clone().with_variant(["gzip"]);
    assert_eq!(tag(&backend.value_key(&variant)), tag(&name));
    assert_ne!(backend.value_key(&variant), name);

    let entry = tower_coalesce::Entry::new(
        StatusCode::OK,
        http::Version::HTTP_11,
        http::HeaderMap::new(),
        Bytes::from_static(b"v"),
        None,
    );
    backend
        .store(&huge, entry, Duration::from_secs(5))
        .await
        .unwrap();
    let mut conn = server.conn();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    // The purge order, started at connect, is the namespace's, not the key's.
    keys.retain(|k| !k.contains("{purge}"));
    keys.sort();
    // The value, and its resource's presence mark, on one slot.
    let live = format!("shop:3:{{{}}}:live", tag(&name));
    assert_eq!(keys, vec![name.clone(), live]);
    let ttl: i64 = redis::cmd("PTTL").arg(&name).query(&mut conn).unwrap();
    assert!(ttl > 0 && ttl <= 5000, "stored with its TTL, got {ttl}");
}

#[tokio::test]
async fn a_corrupt_value_is_a_miss_overwritten_and_never_served() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let backend = RedisBackend::connect(server.url()).await.unwrap();
    let (layer, svc) = instance(&server, &origin).await;

    // The key the layer will use for GET /victim: plant garbage under it.
    let key =
        tower_coalesce::KeyExtractor::extract(&tower_coalesce::HttpKey::new(), &get("/victim"))
            .unwrap();
    let name = backend.value_key(&key);
    let mut conn = server.conn();
    let _: () = redis::cmd("SET")
        .arg(&name)
        .arg(&b"TCE\x01garbage-from-elsewhere"[..])
        .query(&mut conn)
        .unwrap();

    let res = svc.clone().oneshot(get("/victim")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Leader));
    assert_eq!(
        body(res).await.unwrap(),
        "/victim",
        "the planted bytes are never served"
    );
    assert_eq!(origin.calls(), 1);
    assert_eq!(layer.stats().stored, 1);

    let raw: Vec<u8> = redis::cmd("GET").arg(&name).query(&mut conn).unwrap();
    let entry = tower_coalesce::Entry::decode(raw.into()).expect("overwritten with a valid entry");
    assert_eq!(entry.body(), "/victim");
}

#[tokio::test]
async fn with_redis_unreachable_requests_still_succeed_and_storing_resumes_when_it_returns() {
    // A port nobody listens on, yet.
    let port = support::redis::free_port();
    let backend = RedisBackend::builder(format!("redis://127.0.0.1:{port}/"))
        .connect()
        .await
        .expect("an unreachable Redis is not a start-up error");
    let origin = Origin::open();
    let config = CoalesceConfig::new()
        .ttl(Duration::from_secs(60))
        .backend_timeout(Duration::from_millis(300))
        .backend(backend);
    let layer = CoalesceLayer::new(config);
    let svc = layer.layer(origin.serve(echo_path));
    for _ in 0..3 {
        let res = tokio::time::timeout(Duration::from_secs(10), svc.clone().oneshot(get("/up")))
            .await
            .expect("bounded by the backend timeout")
            .unwrap();
        assert_eq!(body(res).await.unwrap(), "/up");
    }
    assert_eq!(origin.calls(), 3);
    assert!(layer.stats().backend_errors >= 3, "{:?}", layer.stats());
    assert_eq!(layer.stats().stored, 0);

    // Redis comes up on that port: the same backend reconnects by itself.
    let _server = RedisServer::start_on(port);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    while layer.stats().stored == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recovered: {:?}",
            layer.stats()
        );
        n += 1;
        let res = svc
            .clone()
            .oneshot(get(&format!("/back/{n}")))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hit = svc
        .clone()
        .oneshot(get(&format!("/back/{n}")))
        .await
        .unwrap();
    assert_eq!(hit.extensions().get::<Outcome>(), Some(&Outcome::Hit));
}

#[tokio::test]
async fn nonsense_settings_are_clear_errors() {
    for (builder, what) in [
        (
            RedisBackend::builder("redis://127.0.0.1:1/").namespace(""),
            "namespace",
        ),
        (
            RedisBackend::builder("redis://127.0.0.1:1/").namespace("a{b"),
            "namespace",
        ),
        (
            RedisBackend::builder("redis://127.0.0.1:1/").response_timeout(Duration::ZERO),
            "timeouts",
        ),
        (RedisBackend::builder("not a url"), "URL"),
    ] {
        let err = builder.connect().await.unwrap_err();
        assert!(err.to_string().contains(what), "{err}");
    }
}

#[tokio::test]
async fn connect_opens_the_connection_but_a_missing_redis_is_not_an_error() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(server.url()).await.unwrap();
    backend.ping().await.expect("connected at start-up");

    let nobody = format!("redis://127.0.0.1:{}/", support::redis::free_port());
    let backend = RedisBackend::connect(nobody)
        .await
        .expect("a Redis that is not there yet is not a start-up error");
    assert!(backend.ping().await.is_err());
}

#[tokio::test]
async fn hits_come_from_the_near_cache_and_end_with_the_redis_ttl() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let ttl = Duration::from_millis(600);
    let instance = |backend: RedisBackend| {
        let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(ttl).backend(backend));
        let svc = layer.layer(origin.serve(echo_path));
        (layer, svc)
    };
    let (_a, svc_a) = instance(RedisBackend::connect(server.url()).await.unwrap());
    let (b, svc_b) = instance(RedisBackend::connect(server.url()).await.unwrap());
    let outcome = |res: &http::Response<_>| *res.extensions().get::<Outcome>().unwrap();

    let res = svc_a.clone().oneshot(get("/near")).await.unwrap();
    assert_eq!(outcome(&res), Outcome::Leader);
    // B reads A's answer from Redis once (a flight), then from memory.
    let res = svc_b.clone().oneshot(get("/near")).await.unwrap();
    assert_eq!(outcome(&res), Outcome::Hit);
    assert_eq!(b.stats().flights, 1);
    for _ in 0..3 {
        let res = svc_b.clone().oneshot(get("/near")).await.unwrap();
        assert_eq!(outcome(&res), Outcome::Hit);
        assert_eq!(body(res).await.unwrap(), "/near");
    }
    assert_eq!(
        b.stats().flights,
        1,
        "hits after the first never left the process"
    );
    assert_eq!(origin.calls(), 1);

    // Kept no longer than Redis keeps it.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let res = svc_b.clone().oneshot(get("/near")).await.unwrap();
    assert_eq!(outcome(&res), Outcome::Leader);
    assert_eq!(origin.calls(), 2);

    // Without the near cache, every hit is a flight that asks Redis.
    let far = RedisBackend::builder(server.url())
        .without_near_cache()
        .connect()
        .await
        .unwrap();
    let (c, svc_c) = instance(far);
    for _ in 0..2 {
        let res = svc_c.clone().oneshot(get("/near")).await.unwrap();
        assert_eq!(outcome(&res), Outcome::Hit);
    }
    assert_eq!(c.stats().flights, 2);
}

#[tokio::test]
async fn the_lease_is_refused_while_an_answer_is_stored() {
    // The race this closes: a flight misses the value, another process
    // completes (stores and frees the lease), then the flight asks for the
    // lease. It must wait for and take the stored answer instead.
    let server = RedisServer::start();
    // Without a near cache, so that the lookups below read Redis.
    let backend = RedisBackend::builder(server.url())
        .without_near_cache()
        .connect()
        .await
        .unwrap();
    let key = Key::from("raced");
    let token = tower_coalesce::LeaseToken::new().unwrap();
    let entry = tower_coalesce::Entry::new(
        StatusCode::OK,
        http::Version::HTTP_11,
        http::HeaderMap::new(),
        Bytes::from_static(b"answer"),
        None,
    );
    backend
        .store(&key, entry, Duration::from_secs(60))
        .await
        .unwrap();
    let lease = Duration::from_secs(10);
    assert!(!backend
        .try_lock(&key, &token, lease, None)
        .await
        .unwrap()
        .is_acquired());

    // A value that is not an entry is a miss, and is deleted by the lookup
    // so that the lease can be taken again.
    let mut conn = server.conn();
    let _: () = redis::cmd("SET")
        .arg(backend.value_key(&key))
        .arg(&b"not an entry"[..])
        .query(&mut conn)
        .unwrap();
    assert!(!backend
        .try_lock(&key, &token, lease, None)
        .await
        .unwrap()
        .is_acquired());
    assert!(backend.lookup(&key).await.unwrap().is_none());
    assert!(backend
        .try_lock(&key, &token, lease, None)
        .await
        .unwrap()
        .is_acquired());
}

#[tokio::test]
async fn a_small_answer_travels_in_the_completion_message() {
    let server = RedisServer::start();
    let leader = RedisBackend::connect(server.url()).await.unwrap();
    let waiter = RedisBackend::connect(server.url()).await.unwrap();
    let lease = Duration::from_secs(10);
    let answer = |size: usize| {
        tower_coalesce::Entry::new(
            StatusCode::OK,
            http::Version::HTTP_11,
            http::HeaderMap::new(),
            Bytes::from(vec![b'a'; size]),
            None,
        )
    };
    for (size, in_message) in [(100, true), (100_000, false)] {
        let key = Key::from(format!("announced-{size}"));
        let token = tower_coalesce::LeaseToken::new().unwrap();
        assert!(leader
            .try_lock(&key, &token, lease, None)
            .await
            .unwrap()
            .is_acquired());
        let mut watch = waiter.watch(&key).await.unwrap().unwrap();
        let done = leader
            .complete(
                &key,
                &token,
                Completion::Stored {
                    entry: answer(size),
                    ttl: Duration::from_secs(60),
                },
            )
            .await
            .unwrap();
        assert_eq!(done, Completed::Done);
        assert!(watch.changed().await.is_some());
        let arrived = waiter.get_local(&key);
        assert_eq!(
            arrived.is_some(),
            in_message,
            "{size}-byte answer: in the message = {in_message}"
        );
        if let Some(entry) = arrived {
            assert_eq!(entry.body().len(), size);
        }
        let found = waiter.lookup(&key).await.unwrap().expect("stored in Redis");
        assert_eq!(found.body().len(), size);
    }
}

/// A waiter that watches a channel just as the last one before it left, so
/// while that one's `UNSUBSCRIBE` may be under way: the new waiter must hear
/// of the completion, never sleep until its lease check (nor wait forever
/// for the unsubscription). Many rounds, with the gap between leaving and
/// watching again spread over the time an unsubscription takes; the order
/// itself is checked in `watch.rs`'s unit tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_races_the_unsubscribe_of_the_last_one_still_hears_the_completion() {
    let server = RedisServer::start();
    let leader = RedisBackend::connect(server.url()).await.unwrap();
    let waiter = RedisBackend::connect(server.url()).await.unwrap();
    let lease = Duration::from_secs(30);
    let entry = tower_coalesce::Entry::new(
        StatusCode::OK,
        http::Version::HTTP_11,
        http::HeaderMap::new(),
        Bytes::from_static(b"done"),
        None,
    );
    for round in 0..150u64 {
        let key = Key::from(format!("raced-{round}"));
        let token = tower_coalesce::LeaseToken::new().unwrap();
        assert!(leader
            .try_lock(&key, &token, lease, None)
            .await
            .unwrap()
            .is_acquired());
        drop(waiter.watch(&key).await.unwrap().unwrap());
        let gap = Duration::from_micros(round % 30 * 20);
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        let mut watch = waiter.watch(&key).await.unwrap().unwrap();
        // A waiter looks before it waits; nothing is stored yet.
        assert!(waiter.lookup(&key).await.unwrap().is_none());
        let complete = leader.complete(
            &key,
            &token,
            Completion::Stored {
                entry: entry.clone(),
                ttl: Duration::from_secs(60),
            },
        );
        assert_eq!(complete.await.unwrap(), Completed::Done);
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .unwrap_or_else(|_| panic!("round {round}: never woken after the completion"));
        assert!(waiter.lookup(&key).await.unwrap().is_some());
    }
}

//! The lease primitives of `RedisBackend` against a real redis-server: only
//! the owner of a lease renews, completes or releases it.

mod support;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version};
use std::time::Duration;
use support::redis::RedisServer;
use tower_coalesce::{
    Completed, Completion, Entry, Invalidation, Key, LeaseToken, Leases, Purge, RedisBackend, Store,
};

fn entry(body: &'static str) -> Entry {
    Entry::new(
        StatusCode::OK,
        Version::HTTP_11,
        HeaderMap::new(),
        Bytes::from_static(body.as_bytes()),
        None,
    )
}

fn pttl(server: &RedisServer, name: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(name)
        .query(&mut server.conn())
        .unwrap()
}

/// Ends `token`'s lease on `key`, storing an answer with `body` for `ttl`.
async fn complete_storing(
    backend: &RedisBackend,
    key: &Key,
    token: &LeaseToken,
    body: &'static str,
    ttl: Duration,
) -> Completed {
    let completion = Completion::Stored {
        entry: entry(body),
        ttl,
    };
    backend.complete(key, token, completion).await.unwrap()
}

#[tokio::test]
async fn a_lease_is_exclusive_until_it_expires() {
    let server = RedisServer::start();
    let (a, b) = (
        RedisBackend::connect(server.url()).await.unwrap(),
        RedisBackend::connect(server.url()).await.unwrap(),
    );
    let key = Key::from("k");
    let (ta, tb) = (LeaseToken::new().unwrap(), LeaseToken::new().unwrap());
    assert_ne!(ta, tb);
    assert!(a
        .try_lock(&key, &ta, Duration::from_millis(300), None)
        .await
        .unwrap()
        .is_acquired());
    assert!(
        !b.try_lock(&key, &tb, Duration::from_millis(300), None)
            .await
            .unwrap()
            .is_acquired(),
        "held elsewhere"
    );
    // Asked again with its own token (an attempt whose reply was lost): the
    // lease is the asker's.
    assert!(a
        .try_lock(&key, &ta, Duration::from_millis(300), None)
        .await
        .unwrap()
        .is_acquired());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        b.try_lock(&key, &tb, Duration::from_secs(5), None)
            .await
            .unwrap()
            .is_acquired(),
        "free once the lease ran out"
    );
}

#[tokio::test]
async fn only_the_owner_renews_a_lease() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(server.url()).await.unwrap();
    let key = Key::from("k");
    let (owner, other) = (LeaseToken::new().unwrap(), LeaseToken::new().unwrap());
    assert!(backend
        .try_lock(&key, &owner, Duration::from_millis(500), None)
        .await
        .unwrap()
        .is_acquired());
    assert!(!backend
        .renew(&key, &other, Duration::from_secs(60))
        .await
        .unwrap());
    assert!(
        pttl(&server, &backend.lock_key(&key)) <= 500,
        "a stranger's renewal changes nothing"
    );
    assert!(backend
        .renew(&key, &owner, Duration::from_secs(60))
        .await
        .unwrap());
    assert!(pttl(&server, &backend.lock_key(&key)) > 50_000);
}

#[tokio::test]
async fn a_stale_leader_neither_overwrites_nor_releases_its_successor() {
    let server = RedisServer::start();
    let (first, second) = (
        RedisBackend::connect(server.url()).await.unwrap(),
        RedisBackend::connect(server.url()).await.unwrap(),
    );
    let key = Key::from("k");
    let (old, new) = (LeaseToken::new().unwrap(), LeaseToken::new().unwrap());
    assert!(first
        .try_lock(&key, &old, Duration::from_millis(200), None)
        .await
        .unwrap()
        .is_acquired());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(second
        .try_lock(&key, &new, Duration::from_secs(30), None)
        .await
        .unwrap()
        .is_acquired());

    // The first leader finishes late.
    assert!(
        !first
            .renew(&key, &old, Duration::from_secs(30))
            .await
            .unwrap(),
        "it learns it lost the lease"
    );
    let late = complete_storing(&first, &key, &old, "stale", Duration::from_secs(60)).await;
    assert_eq!(late, Completed::Lost, "completion is refused");
    assert!(first
        .complete(&key, &old, Completion::Released)
        .await
        .is_ok_and(|done| done == Completed::Lost));
    let holder: String = redis::cmd("GET")
        .arg(second.lock_key(&key))
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(holder, new.as_str(), "the successor's lock is intact");
    assert!(
        second.lookup(&key).await.unwrap().is_none(),
        "no stale value was written"
    );

    assert!(
        complete_storing(&second, &key, &new, "fresh", Duration::from_secs(60)).await
            == Completed::Done
    );
    assert_eq!(first.lookup(&key).await.unwrap().unwrap().body(), "fresh");
    let exists: bool = redis::cmd("EXISTS")
        .arg(second.lock_key(&key))
        .query(&mut server.conn())
        .unwrap();
    assert!(!exists, "completion released the lock");
}

#[tokio::test]
async fn completion_publishes_on_the_keys_channel() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(server.url()).await.unwrap();
    let key = Key::from("k");
    let channel = backend.done_channel(&key);
    assert!(channel.starts_with("coalesce:3:{") && channel.ends_with(":done"));
    assert_eq!(
        channel.split(['{', '}']).nth(1),
        backend.lock_key(&key).split(['{', '}']).nth(1),
        "one hash tag"
    );

    let (tx, rx) = std::sync::mpsc::channel();
    let mut conn = server.conn();
    let listener_channel = channel.clone();
    let listener = std::thread::spawn(move || {
        let mut pubsub = conn.as_pubsub();
        pubsub.subscribe(&listener_channel).unwrap();
        tx.send(()).unwrap();
        pubsub
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let msg = pubsub.get_message().unwrap();
        msg.get_payload::<Vec<u8>>().unwrap()
    });
    rx.recv().unwrap();
    let token = LeaseToken::new().unwrap();
    assert!(backend
        .try_lock(&key, &token, Duration::from_secs(5), None)
        .await
        .unwrap()
        .is_acquired());
    assert!(
        complete_storing(&backend, &key, &token, "x", Duration::from_secs(5)).await
            == Completed::Done
    );
    // A small answer travels in the message: `V`, the TTL in ms, the entry.
    let payload = listener.join().unwrap();
    assert_eq!(payload[0], b'V');
    let ttl = u64::from_be_bytes(payload[1..9].try_into().unwrap());
    assert_eq!(ttl, 5000);
    let entry = tower_coalesce::Entry::decode(payload[9..].to_vec().into()).unwrap();
    assert_eq!(entry.body(), "x");
}

async fn numsub(server: &RedisServer, channel: &str) -> i64 {
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query(&mut server.conn())
        .unwrap();
    n
}

#[tokio::test]
async fn a_watch_is_woken_by_another_instances_completion_and_unsubscribes_when_dropped() {
    let server = RedisServer::start();
    let (waiter, leader) = (
        RedisBackend::connect(server.url()).await.unwrap(),
        RedisBackend::connect(server.url()).await.unwrap(),
    );
    let key = Key::from("k");
    let token = LeaseToken::new().unwrap();
    assert!(leader
        .try_lock(&key, &token, Duration::from_secs(30), None)
        .await
        .unwrap()
        .is_acquired());

    let mut watch = waiter
        .watch(&key)
        .await
        .unwrap()
        .expect("Redis has remote flights");
    assert_eq!(waiter.subscriptions(), 1);
    assert_eq!(numsub(&server, &waiter.done_channel(&key)).await, 1);
    let woken = tokio::spawn(async move {
        let fired = tokio::time::timeout(Duration::from_secs(10), async {
            watch.changed().await.is_some()
        })
        .await;
        (fired, watch)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!woken.is_finished(), "nothing has happened yet");
    assert!(
        complete_storing(&leader, &key, &token, "answer", Duration::from_secs(30)).await
            == Completed::Done
    );
    let (fired, watch) = woken.await.unwrap();
    assert_eq!(fired, Ok(true), "woken by the message");
    assert_eq!(waiter.lookup(&key).await.unwrap().unwrap().body(), "answer");

    drop(watch);
    assert_eq!(waiter.subscriptions(), 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while numsub(&server, &waiter.done_channel(&key)).await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "never unsubscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn losing_the_connection_wakes_every_watch() {
    let server = RedisServer::start();
    let port = server.port;
    let waiter = RedisBackend::connect(server.url()).await.unwrap();
    let mut watch = waiter.watch(&Key::from("k")).await.unwrap().unwrap();
    drop(server);
    let fired = tokio::time::timeout(Duration::from_secs(10), async {
        watch.changed().await.is_some()
    })
    .await;
    assert_eq!(
        fired,
        Ok(true),
        "a disconnection must wake waiters: messages may be lost"
    );
    // Redis returns: the subscription is restored and messages arrive again.
    let server = RedisServer::start_on(port);
    let leader = RedisBackend::connect(server.url()).await.unwrap();
    let key = Key::from("k");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while numsub(&server, &waiter.done_channel(&key)).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never resubscribed");
        // The manager reconnects when it is next used.
        let _ = waiter.lookup(&key).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = LeaseToken::new().unwrap();
    assert!(leader
        .try_lock(&key, &token, Duration::from_secs(5), None)
        .await
        .unwrap()
        .is_acquired());
    assert!(
        leader
            .complete(&key, &token, Completion::Released)
            .await
            .unwrap()
            == Completed::Done
    );
    let fired = tokio::time::timeout(Duration::from_secs(10), async {
        watch.changed().await.is_some()
    })
    .await;
    assert_eq!(fired, Ok(true));
}

#[tokio::test]
async fn a_refresh_lease_is_granted_only_while_the_stale_value_it_saw_is_stored() {
    let server = RedisServer::start();
    let (a, b) = (
        RedisBackend::connect(server.url()).await.unwrap(),
        RedisBackend::connect(server.url()).await.unwrap(),
    );
    let key = Key::from("k");
    let lease = Duration::from_secs(5);
    let at = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let stale = entry("stale").stored(at);
    a.store(&key, stale.clone(), Duration::from_secs(60))
        .await
        .unwrap();

    // A plain flight is refused while an answer is stored; a refresh of
    // exactly that answer is not, and only one refresh gets it.
    let (ta, tb) = (LeaseToken::new().unwrap(), LeaseToken::new().unwrap());
    assert!(!a
        .try_lock(&key, &ta, lease, None)
        .await
        .unwrap()
        .is_acquired());
    assert!(a
        .try_lock(&key, &ta, lease, Some(at))
        .await
        .unwrap()
        .is_acquired());
    assert!(!b
        .try_lock(&key, &tb, lease, Some(at))
        .await
        .unwrap()
        .is_acquired());

    // The refresh stores the next answer: a refresh of the old one is now
    // refused, and its backend's next lookup finds the new one (it came
    // back with the refusal: no lookup round trip needed).
    let fresh = entry("fresh").stored(at + Duration::from_secs(10));
    let completion = Completion::Stored {
        entry: fresh,
        ttl: Duration::from_secs(60),
    };
    assert_eq!(
        a.complete(&key, &ta, completion).await.unwrap(),
        Completed::Done
    );
    let c = RedisBackend::builder(server.url()).connect().await.unwrap();
    let tc = LeaseToken::new().unwrap();
    assert!(!c
        .try_lock(&key, &tc, lease, Some(at))
        .await
        .unwrap()
        .is_acquired());
    assert_eq!(c.get_local(&key).unwrap().body(), "fresh");
}

/// An answer stored without a lease (the backend was skipped at the lease,
/// or a waiter gave up and called the origin itself) is announced like a
/// leader's: instances waiting on the key hear of it at once, with the
/// answer in the message, instead of at their next look a lease later.
#[tokio::test]
async fn an_answer_stored_without_a_lease_is_announced() {
    let server = RedisServer::start();
    let (writer, waiter) = (
        RedisBackend::connect(server.url()).await.unwrap(),
        RedisBackend::connect(server.url()).await.unwrap(),
    );
    let key = Key::from("unleased");
    let mut watch = waiter.watch(&key).await.unwrap().unwrap();
    writer
        .store(&key, entry("stored alone"), Duration::from_secs(30))
        .await
        .unwrap();
    let fired = tokio::time::timeout(Duration::from_secs(5), watch.changed()).await;
    assert!(matches!(fired, Ok(Some(_))), "the waiter was not told");
    // The answer came with the message: no `GET` needed.
    assert_eq!(waiter.get_local(&key).unwrap().body(), "stored alone");
}

#[tokio::test]
async fn a_completion_after_a_purge_during_the_fill_reports_its_answer_not_stored() {
    let server = RedisServer::start();
    let leader = RedisBackend::connect(server.url()).await.unwrap();
    let other = RedisBackend::connect(server.url()).await.unwrap();
    let key = Key::from("k");
    let token = LeaseToken::new().unwrap();
    assert!(leader
        .try_lock(&key, &token, Duration::from_secs(5), None)
        .await
        .unwrap()
        .is_acquired());
    // Another process purges the key's resource (a purge of the key itself
    // would take its lease too) while the flight's origin call runs: the
    // answer's fill started (as `Entry::new`'s is judged) before it.
    other.purge(&Purge::Resource(key.clone())).await.unwrap();
    let done = complete_storing(
        &leader,
        &key,
        &token,
        "made before the purge",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        done,
        Completed::NotStored,
        "the lease was ended, the answer not stored"
    );
    assert!(other.lookup(&key).await.unwrap().is_none());
    // The lease is free: the next flight takes it.
    let next = LeaseToken::new().unwrap();
    assert!(other
        .try_lock(&key, &next, Duration::from_secs(5), None)
        .await
        .unwrap()
        .is_acquired());
}

//! Variants across instances sharing a real redis-server (and a real Redis
//! Cluster): each variant of a resource is stored under its own key on the
//! resource's slot, every instance finds the one its request selects, a
//! burst across instances costs one origin call per variant, and purging
//! the key purges them all.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use std::time::Duration;
use support::redis::{RedisCluster, RedisServer};
use support::{body, by_encoding, until, with_encoding, Origin, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{
    CoalesceConfig, CoalesceLayer, Key, KeyExtractor, Outcome, RedisBackend, RedisBackendBuilder,
};

async fn instance(builder: RedisBackendBuilder, origin: &Origin) -> (CoalesceLayer, Svc) {
    let backend = builder.connect().await.unwrap();
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .backend(backend),
    );
    let svc = Svc::new(layer.layer(origin.serve(by_encoding)));
    (layer, svc)
}

/// The outcome and body of one request.
async fn send(svc: &Svc, encoding: Option<&str>) -> (Outcome, String) {
    let call = svc.clone().oneshot(with_encoding(encoding));
    let res = call.await.unwrap();
    let outcome = *res.extensions().get::<Outcome>().unwrap();
    let body = body(res).await.unwrap();
    (outcome, String::from_utf8(body.to_vec()).unwrap())
}

async fn every_instance_finds_the_variant_its_request_selects(a: &Svc, b: &Svc, origin: &Origin) {
    assert_eq!(
        send(a, Some("gzip")).await,
        (Outcome::Leader, "gzip".into())
    );
    // Found through the primary key's index in Redis.
    assert_eq!(send(b, Some("gzip")).await, (Outcome::Hit, "gzip".into()));
    assert_eq!(send(b, Some("br")).await, (Outcome::Leader, "br".into()));
    assert_eq!(send(a, Some("br")).await, (Outcome::Hit, "br".into()));
    assert_eq!(send(a, None).await, (Outcome::Leader, "-".into()));
    assert_eq!(send(b, None).await, (Outcome::Hit, "-".into()));
    assert_eq!(send(b, Some("gzip")).await, (Outcome::Hit, "gzip".into()));
    assert_eq!(origin.calls(), 3, "one call per variant, fleet-wide");
}

#[tokio::test]
async fn every_instance_finds_the_variant_its_request_selects_on_one_server() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let (_, a) = instance(RedisBackend::builder(server.url()), &origin).await;
    let (_, b) = instance(RedisBackend::builder(server.url()), &origin).await;
    every_instance_finds_the_variant_its_request_selects(&a, &b, &origin).await;
}

#[tokio::test]
async fn every_instance_finds_the_variant_its_request_selects_on_a_cluster() {
    let cluster = RedisCluster::start();
    let origin = Origin::open();
    let (_, a) = instance(RedisBackend::cluster_builder(cluster.urls()), &origin).await;
    let (_, b) = instance(RedisBackend::cluster_builder(cluster.urls()), &origin).await;
    every_instance_finds_the_variant_its_request_selects(&a, &b, &origin).await;
}

#[tokio::test]
async fn a_burst_across_instances_costs_one_call_per_variant() {
    let server = RedisServer::start();
    let origin = Origin::gated();
    let (a_layer, a) = instance(RedisBackend::builder(server.url()), &origin).await;
    let (b_layer, b) = instance(RedisBackend::builder(server.url()), &origin).await;
    // A leads the resource, its answer not known to vary yet.
    let first = tokio::spawn(a.clone().oneshot(with_encoding(Some("gzip"))));
    until(&a_layer, "the first flight", |s| s.origin_calls == 1).await;
    // B's burst waits on A's lease: gzip and br requests alike.
    let burst: Vec<_> = (0..40)
        .map(|i| {
            let encoding = if i % 2 == 0 { "gzip" } else { "br" };
            let call = b.clone().oneshot(with_encoding(Some(encoding)));
            (encoding, tokio::spawn(call))
        })
        .collect();
    until(&b_layer, "B's burst", |s| {
        s.followers == 39 && s.remote_waits == 1
    })
    .await;
    origin.open_gate();
    assert_eq!(body(first.await.unwrap().unwrap()).await.unwrap(), "gzip");
    for (encoding, call) in burst {
        assert_eq!(body(call.await.unwrap().unwrap()).await.unwrap(), encoding);
    }
    assert_eq!(origin.calls(), 2, "gzip once, br once, in the whole fleet");
}

#[tokio::test]
async fn purging_the_key_purges_every_variant_in_every_instance() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let (a_layer, a) = instance(RedisBackend::builder(server.url()), &origin).await;
    let (_, b) = instance(RedisBackend::builder(server.url()), &origin).await;
    for encoding in ["gzip", "br"] {
        assert_eq!(send(&a, Some(encoding)).await.0, Outcome::Leader);
        assert_eq!(send(&b, Some(encoding)).await.0, Outcome::Hit);
    }
    let key: Key =
        KeyExtractor::<Full<Bytes>>::extract(&tower_coalesce::HttpKey::new(), &with_encoding(None))
            .unwrap();
    a_layer.purger().purge_key(&key).await.unwrap();
    // B heard of it; each variant is fetched again once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (outcome, body) = send(&b, Some("gzip")).await;
        assert_eq!(body, "gzip");
        if outcome == Outcome::Leader {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B still serves the purged variant"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(send(&b, Some("br")).await.0, Outcome::Leader);
    assert_eq!(send(&a, Some("br")).await.0, Outcome::Hit);
    assert_eq!(origin.calls(), 4);
}

#[tokio::test]
async fn redis_keeps_a_bounded_number_of_variants() {
    let server = RedisServer::start();
    let origin = Origin::open();
    // No near cache: every lookup reads Redis.
    let builder = || {
        RedisBackend::builder(server.url())
            .without_near_cache()
            .max_variants(2)
    };
    let (_, a) = instance(builder(), &origin).await;
    let (_, b) = instance(builder(), &origin).await;
    assert_eq!(send(&a, Some("a")).await.0, Outcome::Leader);
    assert_eq!(send(&a, Some("b")).await.0, Outcome::Leader);
    // A use of "a" through B: "b" is now the least recently used.
    assert_eq!(send(&b, Some("a")).await.0, Outcome::Hit);
    assert_eq!(send(&b, Some("c")).await.0, Outcome::Leader);
    assert_eq!(send(&a, Some("a")).await.0, Outcome::Hit);
    assert_eq!(send(&a, Some("c")).await.0, Outcome::Hit);
    assert_eq!(
        send(&a, Some("b")).await.0,
        Outcome::Leader,
        "b was dropped"
    );
    assert_eq!(origin.calls(), 4);
    let mut conn = server.conn();
    let values: Vec<String> = redis::cmd("KEYS")
        .arg("coalesce:3:*:v")
        .query(&mut conn)
        .unwrap();
    assert_eq!(values.len(), 2, "{values:?}");
}

//! Large stored answers on a real redis-server (and a real Redis Cluster):
//! an answer over 1 MiB is kept as pieces of at most 1 MiB beside a small
//! value that points to them; other instances read it back whole; a
//! replaced answer's pieces go with it; and an answer with a piece missing
//! is a miss, never a short body.

mod support;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::time::Duration;
use support::redis::{RedisCluster, RedisServer};
use support::{body, get, Origin, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{
    BoxError, CoalesceConfig, CoalesceLayer, HttpKey, KeyExtractor, Outcome, RedisBackend,
    RedisBackendBuilder,
};

/// 3.5 MiB: four pieces once encoded.
const LEN: usize = 7 << 19;

/// The body of the answer's `n`th version: no two versions alike, no piece
/// of one like another's.
fn big(n: u8) -> Bytes {
    (0..LEN)
        .map(|i| (i % 251) as u8 ^ n.wrapping_mul(37))
        .collect()
}

async fn instance(builder: RedisBackendBuilder, origin: &Origin) -> (CoalesceLayer, Svc) {
    let backend = builder.connect().await.unwrap();
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .max_stored_bytes(8 << 20)
            .backend(backend),
    );
    let calls = origin.calls.clone();
    let svc = Svc::new(layer.layer(origin.serve(move |_: Request<Full<Bytes>>| {
        let version = calls.load(std::sync::atomic::Ordering::SeqCst) as u8;
        async move { Ok::<_, BoxError>(Response::new(Full::new(big(version)))) }
    })));
    (layer, svc)
}

async fn send(svc: &Svc) -> (Outcome, Bytes) {
    answer(svc.clone()).await
}

async fn answer(svc: Svc) -> (Outcome, Bytes) {
    let res = svc.oneshot(get("/report")).await.unwrap();
    let outcome = *res.extensions().get::<Outcome>().unwrap();
    (outcome, body(res).await.unwrap())
}

/// The names and lengths of the answer's value and pieces, read from the
/// Redis node `conn` reaches.
fn stored(conn: &mut redis::Connection, value: &str) -> (usize, Vec<usize>) {
    let value_len: usize = redis::cmd("STRLEN").arg(value).query(conn).unwrap();
    let names: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{value}:p:*"))
        .query(conn)
        .unwrap();
    let mut pieces: Vec<usize> = names
        .iter()
        .map(|name| redis::cmd("STRLEN").arg(name).query(conn).unwrap())
        .collect();
    pieces.sort_unstable();
    (value_len, pieces)
}

async fn a_large_answer_is_kept_in_pieces(
    builder: impl Fn() -> RedisBackendBuilder,
    mut conn: impl FnMut(&str) -> redis::Connection,
) {
    let origin = Origin::open();
    let (a, svc_a) = instance(builder(), &origin).await;
    let (_, svc_b) = instance(builder(), &origin).await;
    let key = HttpKey::new().extract(&get("/report")).unwrap();
    let value = builder().connect().await.unwrap().value_key(&key);

    assert_eq!(send(&svc_a).await, (Outcome::Leader, big(1)));
    let (value_len, pieces) = stored(&mut conn(&value), &value);
    assert!(value_len < 200, "the value only points: {value_len} bytes");
    assert_eq!(pieces.len(), 4, "{pieces:?}");
    assert!(pieces.iter().all(|&len| len <= 1 << 20), "{pieces:?}");
    assert!(pieces.iter().sum::<usize>() > LEN);

    // Another instance reads it back whole from Redis.
    assert_eq!(send(&svc_b).await, (Outcome::Hit, big(1)));
    assert_eq!(origin.calls(), 1);

    // Replaced after a purge: the old pieces go with the old value.
    a.purger().purge_url("/report").await.unwrap();
    let (_, svc_c) = instance(builder(), &origin).await;
    assert_eq!(send(&svc_c).await, (Outcome::Leader, big(2)));
    let (_, pieces) = stored(&mut conn(&value), &value);
    assert_eq!(pieces.len(), 4, "only the new answer's pieces: {pieces:?}");

    // A piece gone (evicted): a miss for an instance that did not keep the
    // answer near, then a new answer; never a short or mixed body.
    let names: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{value}:p:*"))
        .query(&mut conn(&value))
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(&names[1])
        .query(&mut conn(&value))
        .unwrap();
    let (_, svc_d) = instance(builder(), &origin).await;
    assert_eq!(send(&svc_d).await, (Outcome::Leader, big(3)));
    let (_, pieces) = stored(&mut conn(&value), &value);
    assert_eq!(
        pieces.len(),
        4,
        "the broken answer's pieces went: {pieces:?}"
    );
    let (_, svc_e) = instance(builder(), &origin).await;
    assert_eq!(send(&svc_e).await, (Outcome::Hit, big(3)));
    assert_eq!(origin.calls(), 3);
}

#[tokio::test]
async fn a_large_answer_is_kept_in_pieces_on_one_server() {
    let server = RedisServer::start();
    a_large_answer_is_kept_in_pieces(|| RedisBackend::builder(server.url()), |_| server.conn())
        .await;
}

#[tokio::test]
async fn a_large_answer_is_kept_in_pieces_on_a_cluster() {
    let cluster = RedisCluster::start();
    a_large_answer_is_kept_in_pieces(
        || RedisBackend::cluster_builder(cluster.urls()),
        |name| {
            // Every piece is on its value's slot, so on its master.
            let master = cluster.master_of(cluster.slot_of(name)).unwrap();
            master.conn()
        },
    )
    .await;
}

#[tokio::test]
async fn a_large_answer_a_purge_fenced_out_leaves_no_pieces() {
    let server = RedisServer::start();
    let origin = Origin::gated();
    let builder = || RedisBackend::builder(server.url());
    let (a, svc_a) = instance(builder(), &origin).await;
    let (b, _) = instance(builder(), &origin).await;
    let key = HttpKey::new().extract(&get("/report")).unwrap();
    let value = builder().connect().await.unwrap().value_key(&key);
    let fill = tokio::spawn(answer(svc_a));
    support::until(&a, "the fill's origin call", |s| s.origin_calls == 1).await;
    b.purger().purge_url("/report").await.unwrap();
    origin.open_gate();
    // Its callers get it; Redis keeps nothing of it.
    assert_eq!(fill.await.unwrap(), (Outcome::Leader, big(1)));
    assert_eq!(stored(&mut server.conn(), &value), (0, vec![]));
}

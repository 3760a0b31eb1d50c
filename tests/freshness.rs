//! `Freshness::Origin`: answers are stored as long as the origin's
//! `Cache-Control`, `Expires` and `Age` allow (RFC 9111 §4.2), and no longer.

mod support;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::time::Duration;
use support::{age, body, get, Origin, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{
    BoxError, CoalesceConfig, CoalesceLayer, Freshness, KeyExtractor, OriginFreshness, Outcome,
};

/// An origin answering with the headers named in the query:
/// `/x?cache-control=max-age%3D60&age=50`.
async fn headers_from_query(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, BoxError> {
    let mut res = Response::new(Full::new(Bytes::from_static(b"answer")));
    for pair in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap();
        let value = value
            .replace("%3D", "=")
            .replace("%2C", ",")
            .replace("%20", " ");
        res.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    Ok(res)
}

fn origin_mode(settings: OriginFreshness) -> (CoalesceLayer, Origin, Svc) {
    let origin = Origin::open();
    let layer = CoalesceLayer::new(CoalesceConfig::new().freshness(Freshness::Origin(settings)));
    let svc = Svc::new(layer.layer(origin.serve(headers_from_query)));
    (layer, origin, svc)
}

async fn outcome(svc: &Svc, path: &str) -> (Outcome, Option<u64>) {
    let res = svc.clone().oneshot(get(path)).await.unwrap();
    let outcome = *res.extensions().get::<Outcome>().unwrap();
    let age = age(&res);
    assert_eq!(body(res).await.unwrap(), "answer");
    (outcome, age)
}

#[tokio::test]
async fn an_answer_is_a_hit_while_the_origin_says_it_is_fresh() {
    let (_, origin, svc) = origin_mode(OriginFreshness::new());
    let path = "/a?cache-control=max-age%3D60";
    assert_eq!(outcome(&svc, path).await, (Outcome::Leader, None));
    assert_eq!(outcome(&svc, path).await, (Outcome::Hit, Some(0)));
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn answers_with_no_freshness_left_are_shared_with_their_flight_but_not_stored() {
    let (_, origin, svc) = origin_mode(OriginFreshness::new());
    let past = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(60));
    let expired = format!(
        "/e?expires={}",
        past.replace(' ', "%20").replace(',', "%2C")
    );
    for path in [
        "/plain",
        "/zero?cache-control=max-age%3D0",
        "/nocache?cache-control=no-cache%2C%20max-age%3D60",
        "/old?cache-control=max-age%3D60&age=60",
        "/bad?cache-control=max-age%3D1x",
        "/expires0?expires=0",
        expired.as_str(),
    ] {
        let before = origin.calls();
        assert_eq!(outcome(&svc, path).await.0, Outcome::Leader, "{path}");
        assert_eq!(outcome(&svc, path).await.0, Outcome::Leader, "{path}");
        assert_eq!(origin.calls(), before + 2, "{path}");
    }
}

#[tokio::test]
async fn the_age_an_answer_arrived_with_counts_against_its_freshness() {
    let (_, origin, svc) = origin_mode(OriginFreshness::new());
    // Fresh for 60 s, 50 of them gone already: served with `Age: 50`.
    let path = "/aged?cache-control=max-age%3D60&age=50";
    outcome(&svc, path).await;
    assert_eq!(outcome(&svc, path).await, (Outcome::Hit, Some(50)));

    // Fresh for 2 s, 1 gone: stored for about 1 s, then fetched again.
    let path = "/short?cache-control=max-age%3D2&age=1";
    outcome(&svc, path).await;
    assert_eq!(outcome(&svc, path).await.0, Outcome::Hit);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(outcome(&svc, path).await.0, Outcome::Leader);
    assert_eq!(origin.calls(), 3);
}

#[tokio::test]
async fn default_ttl_and_max_ttl_bound_what_the_origin_leaves_open() {
    let (_, origin, svc) = origin_mode(
        OriginFreshness::new()
            .default_ttl(Duration::from_secs(60))
            .max_ttl(Duration::from_millis(500)),
    );
    // No freshness information: the default (capped here by max_ttl).
    outcome(&svc, "/plain").await;
    assert_eq!(outcome(&svc, "/plain").await.0, Outcome::Hit);
    // A year of max-age is kept for max_ttl only.
    let year = "/year?cache-control=max-age%3D31536000";
    outcome(&svc, year).await;
    assert_eq!(outcome(&svc, year).await.0, Outcome::Hit);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(outcome(&svc, year).await.0, Outcome::Leader);
    assert_eq!(outcome(&svc, "/plain").await.0, Outcome::Leader);
    assert_eq!(origin.calls(), 4);
}

#[tokio::test]
async fn a_fixed_ttl_ignores_the_origins_freshness() {
    let origin = Origin::open();
    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let svc = Svc::new(layer.layer(origin.serve(headers_from_query)));
    let path = "/zero?cache-control=max-age%3D0";
    outcome(&svc, path).await;
    assert_eq!(outcome(&svc, path).await.0, Outcome::Hit);
    assert_eq!(origin.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_one_redis_keep_the_answer_as_long_as_the_origin_says() {
    let server = support::redis::RedisServer::start();
    let origin = Origin::open();
    let mut svcs = Vec::new();
    for _ in 0..2 {
        let backend = tower_coalesce::RedisBackend::connect(server.url())
            .await
            .unwrap();
        let layer = CoalesceLayer::new(
            CoalesceConfig::new()
                .freshness(Freshness::Origin(OriginFreshness::new()))
                .backend(backend),
        );
        svcs.push(Svc::new(layer.layer(origin.serve(headers_from_query))));
    }
    let path = "/shared?cache-control=max-age%3D60&age=10";
    assert_eq!(outcome(&svcs[0], path).await.0, Outcome::Leader);
    // The other instance finds it in Redis, with its age.
    let (outcome_b, age_b) = outcome(&svcs[1], path).await;
    assert_eq!(outcome_b, Outcome::Hit);
    assert!(matches!(age_b, Some(10..=11)), "{age_b:?}");
    assert_eq!(origin.calls(), 1);
    // Stored in Redis for what was left of its freshness: 50 s.
    let names = tower_coalesce::RedisBackend::connect(server.url())
        .await
        .unwrap();
    let key = tower_coalesce::HttpKey::new().extract(&get(path)).unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(names.value_key(&key))
        .query(&mut server.conn())
        .unwrap();
    assert!((48_000..=50_000).contains(&pttl), "{pttl} ms");
}

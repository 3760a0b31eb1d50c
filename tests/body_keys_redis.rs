//! Body-keyed requests across instances sharing a real redis-server: a
//! burst spread over them costs one origin call, and its answer is not
//! stored unless the route says so.

mod support;

use std::time::Duration;
use support::body::{answers, burst, post, stack, until_calls, Origin, Svc};
use support::redis::RedisServer;
use tower_coalesce::body_keys::{BodyKeys, Route};
use tower_coalesce::{CoalesceConfig, CoalesceLayer, HttpKey, RedisBackend};

async fn instance(
    server: &RedisServer,
    origin: &Origin,
    route: Route,
) -> (Svc, CoalesceLayer<BodyKeys>) {
    let backend = RedisBackend::connect(server.url()).await.unwrap();
    let config = CoalesceConfig::new()
        .ttl(Duration::from_secs(60))
        .backend(backend);
    stack(BodyKeys::new(HttpKey::new()).route(route), config, origin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_two_instances_makes_one_origin_call_and_stores_nothing() {
    const N: usize = 40;
    let server = RedisServer::start();
    let origin = Origin::gated();
    let route = || Route::json(http::Method::POST, "/search");
    let a = instance(&server, &origin, route()).await;
    let b = instance(&server, &origin, route()).await;
    let variant = |i: usize| match i % 2 {
        0 => format!(r#"{{"q":"lamp",{}"page":1}}"#, " ".repeat(i)),
        _ => format!("{{\"page\":1,\n\"q\":\"lamp\"}}{}", "\n".repeat(i)),
    };
    let first = burst(&a.0, vec![post("/search", &variant(0))]).await;
    until_calls(&origin, 1).await;
    let mut rest = Vec::new();
    for i in 1..N {
        let svc = if i % 2 == 0 { &a.0 } else { &b.0 };
        rest.extend(burst(svc, vec![post("/search", &variant(i))]).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while a.1.stats().followers + b.1.stats().followers < (N - 2) as u64
        || b.1.stats().remote_waits < 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?} / {:?}",
            a.1.stats(),
            b.1.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    origin.open_gate();
    let mut all = answers(first).await;
    all.extend(answers(rest).await);
    assert!(all.iter().all(|answer| *answer == all[0]));
    assert_eq!(origin.calls(), 1, "one origin call across the instances");
    assert_eq!(a.1.stats().stored + b.1.stats().stored, 0);

    // Nothing stored: the next request, on either instance, asks again.
    answers(burst(&b.0, vec![post("/search", &variant(3))]).await).await;
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_routes_answer_serves_the_other_instance() {
    let server = RedisServer::start();
    let origin = Origin::open();
    let route = || Route::json(http::Method::POST, "/search").stored();
    let a = instance(&server, &origin, route()).await;
    let b = instance(&server, &origin, route()).await;
    answers(burst(&a.0, vec![post("/search", r#"{"q":1,"p":2}"#)]).await).await;
    answers(burst(&b.0, vec![post("/search", r#"{ "p": 2, "q": 1 }"#)]).await).await;
    assert_eq!(origin.calls(), 1);
    assert_eq!(a.1.stats().stored, 1);
}

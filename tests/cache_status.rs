//! `Cache-Status` (RFC 9211): this cache's member, after the origin's.

mod support;

use std::time::Duration;
use support::{echo_path, get, until, Origin, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer};

async fn status(svc: &Svc, path: &str) -> Vec<String> {
    members(svc.clone(), path).await
}

async fn members(svc: Svc, path: &str) -> Vec<String> {
    let res = svc.oneshot(get(path)).await.unwrap();
    res.headers()
        .get_all("cache-status")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn each_response_says_how_this_cache_handled_it() {
    let origin = Origin::open();
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .stale_while_revalidate(Duration::from_secs(60))
            .cache_status("edge"),
    );
    let svc = Svc::new(layer.layer(origin.serve(echo_path)));
    assert_eq!(
        status(&svc, "/a").await,
        ["edge; fwd=miss; fwd-status=200; stored"]
    );
    let hit = status(&svc, "/a").await;
    assert!(
        matches!(hit[..], [ref m] if m == "edge; hit; ttl=60" || m == "edge; hit; ttl=59"),
        "{hit:?}"
    );
    // A request the layer does not handle.
    let post = http::Request::post("/a")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let res = svc.clone().oneshot(post).await.unwrap();
    assert_eq!(res.headers()["cache-status"], "edge; fwd=bypass");
}

#[tokio::test]
async fn an_upstream_member_comes_first() {
    let origin = Origin::open();
    let layer = CoalesceLayer::new(CoalesceConfig::new().cache_status("edge"));
    let svc = Svc::new(layer.layer(origin.serve(|_req| async {
        let mut res = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
        res.headers_mut()
            .insert("cache-status", "origin-cache; hit".parse().unwrap());
        Ok(res)
    })));
    assert_eq!(
        status(&svc, "/a").await,
        ["origin-cache; hit", "edge; fwd=miss; fwd-status=200"]
    );
}

#[test]
fn the_cache_name_must_be_a_token() {
    for bad in ["", "1edge", "my cache", "a;b"] {
        let config = CoalesceConfig::new().cache_status(bad);
        assert!(CoalesceLayer::builder(config).build().is_err(), "{bad:?}");
    }
    assert!(
        CoalesceLayer::builder(CoalesceConfig::new().cache_status("cdn.example:443/x"))
            .build()
            .is_ok()
    );
}

/// A layer keeping answers 100 ms, serving them stale on error, over an
/// origin whose first answer is `200` and every later one `503`.
fn failing_after_one(origin: &Origin) -> (CoalesceLayer, Svc) {
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_millis(100))
            .stale_if_error(Duration::from_secs(60))
            .cache_status("edge"),
    );
    let calls = origin.calls.clone();
    let svc = Svc::new(layer.layer(origin.serve(move |_req| {
        let first = calls.load(std::sync::atomic::Ordering::SeqCst) == 1;
        async move {
            let mut res = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
            if !first {
                *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok(res)
        }
    })));
    (layer, svc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_for_a_failing_origin_is_fwd_stale_with_the_origins_status() {
    let origin = Origin::gated();
    let (layer, svc) = failing_after_one(&origin);
    origin.let_through(1);
    assert_eq!(
        status(&svc, "/a").await,
        ["edge; fwd=miss; fwd-status=200; stored"]
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Two requests on the stale answer, held at the origin until both are
    // in the flight: the leader's caller and a follower.
    let both = [(); 2].map(|()| {
        let svc = svc.clone();
        tokio::spawn(members(svc, "/a"))
    });
    until(&layer, "both to join the flight", |s| s.followers == 1).await;
    origin.open_gate();
    let mut members = Vec::new();
    for call in both {
        members.extend(call.await.unwrap());
    }
    let stale = |m: &str| m.starts_with("edge; fwd=stale; fwd-status=503; ");
    assert!(members.iter().all(|m| stale(m)), "{members:?}");
    assert_eq!(
        members.iter().filter(|m| m.contains("; collapsed")).count(),
        1,
        "{members:?}"
    );
    // Freshness left, rounded down: negative from the first instant stale.
    assert!(members.iter().all(|m| m.contains("; ttl=-")), "{members:?}");
    assert_eq!(layer.stats().stale_on_error, 1);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_refuses_a_stored_answer_is_fwd_request() {
    let origin = Origin::gated();
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .cache_status("edge"),
    );
    let svc = Svc::new(layer.layer(origin.serve(echo_path)));
    origin.let_through(1);
    status(&svc, "/a").await;
    let reload = || {
        let svc = svc.clone();
        tokio::spawn(async move {
            let mut req = get("/a");
            req.headers_mut()
                .insert("cache-control", "no-cache".parse().unwrap());
            let res = svc.oneshot(req).await.unwrap();
            res.headers()["cache-status"].to_str().unwrap().to_owned()
        })
    };
    let both = [reload(), reload()];
    until(&layer, "both reloads to join one flight", |s| {
        s.followers == 1
    })
    .await;
    origin.open_gate();
    let mut members = Vec::new();
    for call in both {
        members.push(call.await.unwrap());
    }
    members.sort();
    assert_eq!(
        members,
        [
            "edge; fwd=request; fwd-status=200; collapsed",
            "edge; fwd=request; fwd-status=200; stored",
        ]
    );
    assert_eq!(origin.calls(), 2);
}

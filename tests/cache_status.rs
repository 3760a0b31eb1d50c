//! `Cache-Status` (RFC 9211): this cache's member, after the origin's.

mod support;

use std::time::Duration;
use support::{echo_path, get, Origin, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer};

async fn status(svc: &Svc, path: &str) -> Vec<String> {
    let res = svc.clone().oneshot(get(path)).await.unwrap();
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
    assert_eq!(status(&svc, "/a").await, ["edge; fwd=miss; fwd-status=200"]);
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

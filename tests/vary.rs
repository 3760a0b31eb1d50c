//! `Vary` on a response is honoured: requests that differ in a header the
//! answer varies on never share it, and what could differ is never stored.

mod support;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::collections::HashMap;
use std::time::Duration;
use support::{body, until, Origin};
use tower::{Layer, ServiceExt};
use tower_coalesce::{BoxError, CoalesceConfig, CoalesceLayer, Key, Outcome};

fn get(tenant: &str) -> Request<Full<Bytes>> {
    Request::get("/report")
        .header("x-tenant", tenant)
        .header("accept-encoding", "gzip")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Answers with the tenant it was asked for, and says so in `Vary`.
async fn per_tenant(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, BoxError> {
    let tenant = req.headers()["x-tenant"].as_bytes().to_vec();
    Ok(Response::builder()
        .header("vary", "X-Tenant")
        .body(Full::new(Bytes::from(tenant)))
        .unwrap())
}

#[tokio::test]
async fn followers_that_differ_in_a_varied_header_never_get_the_leaders_answer() {
    let origin = Origin::gated();
    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let svc = layer.layer(origin.serve(per_tenant));
    let leader = tokio::spawn(svc.clone().oneshot(get("alpha")));
    until(&layer, "the flight", |s| s.origin_calls == 1).await;
    // The key is the same for both tenants (x-tenant is not in it), so all
    // of these follow the alpha flight.
    let followers: Vec<_> = ["alpha", "beta", "alpha", "beta", "gamma"]
        .into_iter()
        .map(|t| (t, tokio::spawn(svc.clone().oneshot(get(t)))))
        .collect();
    until(&layer, "the followers", |s| s.followers == 5).await;
    origin.open_gate();

    assert_eq!(body(leader.await.unwrap().unwrap()).await.unwrap(), "alpha");
    let mut outcomes = HashMap::new();
    for (tenant, follower) in followers {
        let res = follower.await.unwrap().unwrap();
        let outcome = *res.extensions().get::<Outcome>().unwrap();
        assert_eq!(
            body(res).await.unwrap(),
            tenant,
            "{tenant} got another tenant's answer"
        );
        *outcomes.entry((tenant, outcome)).or_insert(0) += 1;
    }
    assert_eq!(
        outcomes[&("alpha", Outcome::Follower)],
        2,
        "same values share"
    );
    assert_eq!(outcomes[&("beta", Outcome::Pass)], 2);
    assert_eq!(outcomes[&("gamma", Outcome::Pass)], 1);
    assert_eq!(
        origin.calls(),
        4,
        "the leader's call and one per differing follower"
    );
    assert_eq!(
        layer.stats().stored,
        0,
        "an answer that varies outside the key is not stored"
    );
    let later = svc.clone().oneshot(get("beta")).await.unwrap();
    assert_eq!(body(later).await.unwrap(), "beta");
}

#[tokio::test]
async fn a_response_varying_only_on_headers_in_the_key_is_stored_and_shared() {
    let origin = Origin::open();
    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    // The default key includes Accept-Encoding.
    let svc = layer.layer(origin.serve(|req: Request<Full<Bytes>>| async move {
        let encoding = req.headers()["accept-encoding"].as_bytes().to_vec();
        Ok::<_, BoxError>(
            Response::builder()
                .header("vary", "accept-encoding")
                .body(Full::new(Bytes::from(encoding)))
                .unwrap(),
        )
    }));
    let with = |encoding: &'static str| {
        Request::get("/page")
            .header("accept-encoding", encoding)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    for _ in 0..2 {
        let res = svc.clone().oneshot(with("gzip")).await.unwrap();
        assert_eq!(body(res).await.unwrap(), "gzip");
    }
    let res = svc.clone().oneshot(with("br")).await.unwrap();
    assert_eq!(body(res).await.unwrap(), "br");
    assert_eq!(
        origin.calls(),
        2,
        "one per encoding; the second gzip was a hit"
    );
    assert_eq!(layer.stats().hits, 1);
}

#[tokio::test]
async fn an_extractor_that_keys_no_header_gets_varied_answers_unstored() {
    let origin = Origin::open();
    let by_path = |req: &Request<Full<Bytes>>| {
        Some(Key::new(Bytes::copy_from_slice(
            req.uri().path().as_bytes(),
        )))
    };
    let layer = CoalesceLayer::builder(CoalesceConfig::new().ttl(Duration::from_secs(60)))
        .extractor(by_path)
        .build()
        .unwrap();
    let svc = layer.layer(origin.serve(per_tenant));
    for tenant in ["alpha", "beta", "alpha"] {
        let res = svc.clone().oneshot(get(tenant)).await.unwrap();
        assert_eq!(body(res).await.unwrap(), tenant);
    }
    assert_eq!(
        origin.calls(),
        3,
        "nothing stored, so no hit can cross tenants"
    );
    assert_eq!(layer.stats().stored, 0);
}

#[tokio::test]
async fn vary_star_and_unreadable_vary_are_private() {
    for vary in ["*", "accept, *", "bad header name"] {
        let origin = Origin::gated();
        let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
        let svc = layer.layer(origin.serve(move |_| async move {
            Ok::<_, BoxError>(
                Response::builder()
                    .header("vary", vary)
                    .body(Full::new(Bytes::from_static(b"x")))
                    .unwrap(),
            )
        }));
        let leader = tokio::spawn(svc.clone().oneshot(get("alpha")));
        until(&layer, "the flight", |s| s.origin_calls == 1).await;
        let follower = tokio::spawn(svc.clone().oneshot(get("alpha")));
        until(&layer, "the follower", |s| s.followers == 1).await;
        origin.open_gate();
        leader.await.unwrap().unwrap();
        let res = follower.await.unwrap().unwrap();
        assert_eq!(
            res.extensions().get::<Outcome>(),
            Some(&Outcome::Pass),
            "Vary: {vary}"
        );
        assert_eq!(layer.stats().stored, 0);
    }
}

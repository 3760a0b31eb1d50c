//! Variants (RFC 9111 §4.1): requests that differ in a header an answer
//! varies on never share it, each variant is stored under its own key and
//! served to the requests that select it, and requests that differ only in
//! headers no answer varies on share one answer.

mod support;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use proptest::prelude::*;
use std::collections::HashMap;
use std::time::Duration;
use support::{body, by_encoding, until, with_encoding, Origin};
use tower::{Layer, ServiceExt};
use tower_coalesce::{BoxError, CoalesceConfig, CoalesceLayer, Key, MemoryBackend, Outcome, Purge};

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

/// What browsers and clients send, in five spellings (two of which
/// normalise to the same value).
const SPELLINGS: [Option<&str>; 5] = [
    Some("gzip, deflate, br, zstd"),
    Some("gzip,deflate,br,zstd"),
    Some("gzip, deflate"),
    Some("identity"),
    None,
];

#[tokio::test]
async fn followers_that_differ_in_a_varied_header_get_a_flight_of_their_own() {
    let origin = Origin::gated();
    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let svc = layer.layer(origin.serve(per_tenant));
    let leader = tokio::spawn(svc.clone().oneshot(get("alpha")));
    until(&layer, "the flight", |s| s.origin_calls == 1).await;
    // The key is the same for every tenant (x-tenant is not in it), so all
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
        outcomes
            .entry(tenant)
            .or_insert_with(Vec::new)
            .push(outcome);
    }
    assert_eq!(outcomes["alpha"], [Outcome::Follower, Outcome::Follower]);
    // The betas meet in one flight of their own.
    let mut beta = outcomes["beta"].clone();
    beta.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(beta, [Outcome::Follower, Outcome::Leader]);
    assert_eq!(outcomes["gamma"], [Outcome::Leader]);
    assert_eq!(origin.calls(), 3, "one call per variant");
    assert_eq!(layer.stats().stored, 3, "each variant is stored");
    for tenant in ["beta", "alpha", "gamma"] {
        let later = svc.clone().oneshot(get(tenant)).await.unwrap();
        assert_eq!(later.extensions().get::<Outcome>(), Some(&Outcome::Hit));
        assert_eq!(body(later).await.unwrap(), tenant);
    }
    assert_eq!(origin.calls(), 3);
}

#[tokio::test]
async fn a_burst_that_differs_only_in_accept_encoding_shares_an_answer_that_does_not_vary() {
    let origin = Origin::gated();
    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let svc = layer.layer(origin.serve(|_| async {
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"plain"))))
    }));
    let burst: Vec<_> = (0..1000)
        .map(|i| tokio::spawn(svc.clone().oneshot(with_encoding(SPELLINGS[i % 5]))))
        .collect();
    until(&layer, "the burst", |s| s.followers == 999).await;
    origin.open_gate();
    for res in burst {
        assert_eq!(body(res.await.unwrap().unwrap()).await.unwrap(), "plain");
    }
    assert_eq!(origin.calls(), 1);
    for spelling in SPELLINGS {
        let res = svc.clone().oneshot(with_encoding(spelling)).await.unwrap();
        assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Hit));
    }
}

#[tokio::test]
async fn a_burst_for_an_answer_varying_on_accept_encoding_costs_one_call_per_variant() {
    for (normalize, variants) in [(false, 4), (true, 3)] {
        let origin = Origin::gated();
        let config = CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .normalize_accept_encoding(normalize);
        let layer = CoalesceLayer::new(config);
        let svc = layer.layer(origin.serve(by_encoding));
        // The first request's answer tells the layer what the answers vary
        // on; the burst comes while it is under way.
        let burst: Vec<_> = (0..1000)
            .map(|i| {
                let spelling = SPELLINGS[i % 5];
                (
                    spelling,
                    tokio::spawn(svc.clone().oneshot(with_encoding(spelling))),
                )
            })
            .collect();
        until(&layer, "the burst", |s| s.followers == 999).await;
        origin.open_gate();
        for (spelling, res) in burst {
            let got = body(res.await.unwrap().unwrap()).await.unwrap();
            let expected = match (normalize, spelling) {
                (false, Some(spelling)) => spelling.to_owned(),
                (true, Some(s)) if s.contains("br") => "br".to_owned(),
                (true, Some(s)) if s.contains("gzip") => "gzip".to_owned(),
                _ => "-".to_owned(),
            };
            // Spellings that normalise alike (RFC 9111 §4.1) share: the
            // answer may be one made for another spelling of the same value.
            let got = String::from_utf8(got.to_vec()).unwrap().replace(' ', "");
            assert_eq!(
                got,
                expected.replace(' ', ""),
                "normalize={normalize} {spelling:?}"
            );
        }
        assert_eq!(origin.calls(), variants, "normalize={normalize}");
        for spelling in SPELLINGS {
            let res = svc.clone().oneshot(with_encoding(spelling)).await.unwrap();
            assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Hit));
        }
        assert_eq!(origin.calls(), variants);
    }
}

#[tokio::test]
async fn an_encoded_answer_without_vary_is_selected_by_accept_encoding() {
    let origin = Origin::open();
    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    // An origin that compresses when it may, and says nothing in Vary
    // (nginx's gzip_vary is off by default).
    let svc = layer.layer(origin.serve(|req: Request<Full<Bytes>>| async move {
        let gzip = req
            .headers()
            .get("accept-encoding")
            .is_some_and(|v| v.to_str().unwrap().contains("gzip"));
        let res = if gzip {
            Response::builder()
                .header("content-encoding", "gzip")
                .body(Full::new(Bytes::from_static(b"\x1f\x8bcompressed")))
        } else {
            Response::builder().body(Full::new(Bytes::from_static(b"plain")))
        };
        Ok::<_, BoxError>(res.unwrap())
    }));
    let send = |encoding| {
        let svc = svc.clone();
        async move {
            let res = svc.oneshot(with_encoding(encoding)).await.unwrap();
            let outcome = *res.extensions().get::<Outcome>().unwrap();
            (outcome, body(res).await.unwrap())
        }
    };
    assert_eq!(send(Some("gzip")).await.1, &b"\x1f\x8bcompressed"[..]);
    // A client that cannot read gzip never gets the gzip body.
    assert_eq!(send(None).await, (Outcome::Leader, Bytes::from("plain")));
    assert_eq!(send(Some("identity")).await.1, "plain");
    assert_eq!(send(Some("gzip")).await.0, Outcome::Hit);
    assert_eq!(send(None).await.0, Outcome::Hit);
}

#[tokio::test]
async fn variants_are_bounded_the_least_recently_used_going_first() {
    let origin = Origin::open();
    let backend = MemoryBackend::builder().max_variants(2).build();
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .backend(backend),
    );
    let svc = layer.layer(origin.serve(by_encoding));
    let send = |encoding: &'static str| {
        let svc = svc.clone();
        async move {
            let res = svc.oneshot(with_encoding(Some(encoding))).await.unwrap();
            let outcome = *res.extensions().get::<Outcome>().unwrap();
            assert_eq!(body(res).await.unwrap(), encoding);
            outcome
        }
    };
    assert_eq!(send("a").await, Outcome::Leader);
    assert_eq!(send("b").await, Outcome::Leader);
    // "a" used: "b" is now the least recently used.
    assert_eq!(send("a").await, Outcome::Hit);
    assert_eq!(send("c").await, Outcome::Leader);
    assert_eq!(send("a").await, Outcome::Hit);
    assert_eq!(send("c").await, Outcome::Hit);
    assert_eq!(send("b").await, Outcome::Leader, "b was dropped");
    assert_eq!(origin.calls(), 4);
}

#[tokio::test]
async fn purging_the_key_purges_every_variant() {
    let origin = Origin::open();
    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let svc = layer.layer(origin.serve(by_encoding));
    let outcome = |encoding: &'static str| {
        let svc = svc.clone();
        async move {
            let res = svc.oneshot(with_encoding(Some(encoding))).await.unwrap();
            *res.extensions().get::<Outcome>().unwrap()
        }
    };
    for encoding in ["gzip", "br"] {
        assert_eq!(outcome(encoding).await, Outcome::Leader);
        assert_eq!(outcome(encoding).await, Outcome::Hit);
    }
    let key = tower_coalesce::HttpKey::new();
    let key: Key =
        tower_coalesce::KeyExtractor::<Full<Bytes>>::extract(&key, &with_encoding(None)).unwrap();
    layer.purger().purge(Purge::Key(key)).await.unwrap();
    for encoding in ["gzip", "br"] {
        assert_eq!(outcome(encoding).await, Outcome::Leader, "{encoding}");
    }
    assert_eq!(origin.calls(), 4);
}

#[tokio::test]
async fn a_response_varying_only_on_headers_in_the_key_is_stored_and_shared() {
    let origin = Origin::open();
    let layer = CoalesceLayer::builder(CoalesceConfig::new().ttl(Duration::from_secs(60)))
        .extractor(tower_coalesce::HttpKey::new().with_accept_headers())
        .build()
        .unwrap();
    let svc = layer.layer(origin.serve(by_encoding));
    for _ in 0..2 {
        let res = svc
            .clone()
            .oneshot(with_encoding(Some("gzip")))
            .await
            .unwrap();
        assert_eq!(body(res).await.unwrap(), "gzip");
    }
    let res = svc
        .clone()
        .oneshot(with_encoding(Some("br")))
        .await
        .unwrap();
    assert_eq!(body(res).await.unwrap(), "br");
    assert_eq!(
        origin.calls(),
        2,
        "one per encoding; the second gzip was a hit"
    );
    assert_eq!(layer.stats().hits, 1);
}

#[tokio::test]
async fn an_extractor_that_keys_no_header_stores_each_variant() {
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
    for tenant in ["alpha", "beta", "alpha", "beta"] {
        let res = svc.clone().oneshot(get(tenant)).await.unwrap();
        assert_eq!(body(res).await.unwrap(), tenant);
    }
    assert_eq!(origin.calls(), 2, "a hit never crosses tenants");
    assert_eq!(layer.stats().stored, 2);
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

/// One request of the property below: values of the two headers the
/// answers may vary on, spelled in one of a few ways.
fn request_values() -> impl Strategy<Value = (Option<&'static str>, Option<&'static str>)> {
    let encodings = prop::sample::select(vec![
        None,
        Some("gzip"),
        Some(" gzip"),
        Some("GZIP"),
        Some("br, gzip"),
        Some("br,gzip"),
        Some(""),
    ]);
    let tenants = prop::sample::select(vec![None, Some("a"), Some("A"), Some("b"), Some("a, b")]);
    (encodings, tenants)
}

/// The request's values as a cache may compare them: what the answer made
/// for it must carry.
fn expected(encoding: Option<&str>, tenant: Option<&str>, vary: &str) -> String {
    let encoding = encoding.map(|e| e.to_ascii_lowercase().replace(' ', ""));
    let tenant = tenant.map(|t| t.replace(' ', ""));
    let mut out = String::new();
    if vary.contains("accept-encoding") {
        out += &format!("ae={encoding:?};");
    }
    if vary.contains("x-tenant") {
        out += &format!("t={tenant:?};");
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever mix of requests comes, in bursts, never does an answer reach
    /// a request whose values of the headers it varies on differ from those
    /// it was made for.
    #[test]
    fn no_answer_reaches_a_request_that_selects_another_variant(
        vary in prop::sample::select(vec!["accept-encoding", "x-tenant", "accept-encoding, x-tenant", ""]),
        bursts in prop::collection::vec(prop::collection::vec(request_values(), 1..12), 1..5),
        max_variants in 1usize..4,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let origin = Origin::open();
            let backend = MemoryBackend::builder().max_variants(max_variants).build();
            let layer = CoalesceLayer::new(
                CoalesceConfig::new().ttl(Duration::from_secs(60)).backend(backend),
            );
            let svc = layer.layer(origin.serve(move |req: Request<Full<Bytes>>| async move {
                // Slow enough for a burst to meet in flights.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let value = |name: &str| {
                    req.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
                };
                let body = expected(value("accept-encoding").as_deref(), value("x-tenant").as_deref(), vary);
                let mut res = Response::builder();
                if !vary.is_empty() {
                    res = res.header("vary", vary);
                }
                Ok::<_, BoxError>(res.body(Full::new(Bytes::from(body))).unwrap())
            }));
            for burst in bursts {
                let calls: Vec<_> = burst
                    .into_iter()
                    .map(|(encoding, tenant)| {
                        let mut req = Request::get("/p");
                        if let Some(e) = encoding {
                            req = req.header("accept-encoding", e);
                        }
                        if let Some(t) = tenant {
                            req = req.header("x-tenant", t);
                        }
                        let req = req.body(Full::new(Bytes::new())).unwrap();
                        let want = expected(encoding, tenant, vary);
                        (want, tokio::spawn(svc.clone().oneshot(req)))
                    })
                    .collect();
                for (want, call) in calls {
                    let got = body(call.await.unwrap().unwrap()).await.unwrap();
                    assert_eq!(got, want.as_bytes());
                }
            }
        });
    }
}

//! Targeted cache control (RFC 9213): a configured field such as
//! `CDN-Cache-Control` decides this cache's storage and freshness in place
//! of `Cache-Control` and `Expires`; an invalid or empty one is ignored.

mod support;

use bytes::Bytes;
use http::{HeaderName, Response};
use http_body_util::Full;
use support::{body, get, Origin};
use tower::{Layer, ServiceExt};
use tower_coalesce::{
    BoxError, CoalesceConfig, CoalesceLayer, Freshness, OriginFreshness, Outcome,
};

const CDN: HeaderName = HeaderName::from_static("cdn-cache-control");
const OWN: HeaderName = HeaderName::from_static("coalesce-cache-control");

fn origin_freshness() -> CoalesceConfig {
    CoalesceConfig::new().freshness(Freshness::Origin(OriginFreshness::new()))
}

/// The outcomes of two requests in a row for an answer with `headers`, and
/// the second answer's headers.
async fn twice(
    config: CoalesceConfig,
    headers: &'static [(&'static str, &'static str)],
) -> ([Outcome; 2], http::HeaderMap) {
    let origin = Origin::open();
    let svc = CoalesceLayer::new(config).layer(origin.serve(move |_| async move {
        let mut res = Response::builder();
        for (name, value) in headers {
            res = res.header(*name, *value);
        }
        Ok::<_, BoxError>(res.body(Full::new(Bytes::from_static(b"page"))).unwrap())
    }));
    let mut outcomes = Vec::new();
    let mut last = http::HeaderMap::new();
    for _ in 0..2 {
        let res = svc.clone().oneshot(get("/page")).await.unwrap();
        outcomes.push(*res.extensions().get::<Outcome>().unwrap());
        last = res.headers().clone();
        body(res).await.unwrap();
    }
    ([outcomes[0], outcomes[1]], last)
}

#[tokio::test]
async fn a_targeted_field_decides_in_place_of_cache_control_and_expires() {
    let cdn = || origin_freshness().targeted_cache_control([CDN]);
    let stored = [Outcome::Leader, Outcome::Hit];
    let not_stored = [Outcome::Leader, Outcome::Leader];
    // Private: not shared either, and the key passes.
    let private = [Outcome::Leader, Outcome::Pass];
    for (headers, expected) in [
        // Stored by the targeted field alone.
        (
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60"),
            ][..],
            stored,
        ),
        (
            &[
                ("expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
                ("cdn-cache-control", "max-age=60"),
            ],
            stored,
        ),
        // Kept from this cache by the targeted field.
        (
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "private"),
            ],
            private,
        ),
        (
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "no-store"),
            ],
            private,
        ),
        (
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "max-age=0"),
            ],
            not_stored,
        ),
        // Invalid or empty: ignored, Cache-Control decides.
        (
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "Private"),
            ],
            stored,
        ),
        (
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60,"),
            ],
            private,
        ),
        (
            &[("cache-control", "max-age=60"), ("cdn-cache-control", "")],
            stored,
        ),
    ] {
        let headers: &'static [(&str, &str)] = Box::leak(headers.to_vec().into_boxed_slice());
        let (outcomes, last) = twice(cdn(), headers).await;
        assert_eq!(outcomes, expected, "{headers:?}");
        // Passed on downstream.
        if outcomes[1] == Outcome::Hit {
            assert!(last.contains_key(CDN));
        }
    }
    // Without the setting, the field means nothing to this cache.
    let (outcomes, _) = twice(
        origin_freshness(),
        &[
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "private"),
        ],
    )
    .await;
    assert_eq!(outcomes, stored);
}

#[tokio::test]
async fn this_caches_own_field_comes_first_and_is_taken_off_the_answers() {
    let config = origin_freshness()
        .targeted_cache_control([CDN])
        .own_cache_control(OWN);
    let (outcomes, last) = twice(
        config,
        &[
            ("cdn-cache-control", "no-store"),
            ("coalesce-cache-control", "max-age=60"),
        ],
    )
    .await;
    assert_eq!(outcomes, [Outcome::Leader, Outcome::Hit]);
    assert!(!last.contains_key(OWN), "it speaks to this cache only");
    assert_eq!(last[CDN], "no-store", "the CDN's is passed on");
}

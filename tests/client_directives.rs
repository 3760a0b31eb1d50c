//! A client's `Cache-Control` (RFC 9111 §5.2.1): `no-cache`, `max-age=0`
//! and `Pragma: no-cache` are not answered from storage but coalesce with
//! each other; `only-if-cached` never reaches the origin.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{body, until, Svc};
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};
use tower_coalesce::{BoxError, CoalesceConfig, CoalesceLayer, Outcome};

/// Answers `answer <n>` to its n-th call; once closed, calls wait for a
/// permit.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicUsize>,
    gate: Arc<Option<Semaphore>>,
}

impl Origin {
    fn gated() -> Self {
        Self {
            calls: Arc::default(),
            gate: Arc::new(Some(Semaphore::new(0))),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn layered(&self, config: CoalesceConfig) -> (CoalesceLayer, Svc) {
        let me = self.clone();
        let layer = CoalesceLayer::new(config);
        let svc = Svc::new(
            layer.layer(tower::service_fn(move |_req: Request<Full<Bytes>>| {
                let me = me.clone();
                async move {
                    let n = me.calls.fetch_add(1, Ordering::SeqCst) + 1;
                    if let (Some(gate), true) = (&*me.gate, n > 1) {
                        gate.acquire().await.unwrap().forget();
                    }
                    Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(format!("answer {n}")))))
                }
            })),
        );
        (layer, svc)
    }
}

fn get(headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::get("/a");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::new())).unwrap()
}

fn answer(
    svc: &Svc,
    headers: &[(&str, &str)],
) -> impl std::future::Future<Output = (Outcome, StatusCode, String)> + Send + 'static {
    let call = svc.clone().oneshot(get(headers));
    async move {
        let res = call.await.unwrap();
        let outcome = *res.extensions().get::<Outcome>().unwrap();
        let status = res.status();
        let text = String::from_utf8(body(res).await.unwrap().to_vec()).unwrap();
        (outcome, status, text)
    }
}

fn stored() -> CoalesceConfig {
    CoalesceConfig::new().ttl(Duration::from_secs(60))
}

#[tokio::test]
async fn no_cache_max_age_zero_and_pragma_reach_the_origin_and_renew_the_stored_answer() {
    let origin = Origin::default();
    let (_, svc) = origin.layered(stored());
    assert_eq!(answer(&svc, &[]).await.2, "answer 1");
    assert_eq!(answer(&svc, &[]).await.0, Outcome::Hit);
    let mut n = 1;
    for asked in [
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("pragma", "no-cache"),
    ] {
        n += 1;
        let (outcome, _, text) = answer(&svc, &[asked]).await;
        assert_eq!(
            (outcome, text),
            (Outcome::Leader, format!("answer {n}")),
            "{asked:?}"
        );
        // What it fetched is what is stored now.
        assert_eq!(
            answer(&svc, &[]).await,
            (Outcome::Hit, StatusCode::OK, format!("answer {n}"))
        );
    }
    // A bound the stored answer meets: served from storage.
    assert_eq!(
        answer(&svc, &[("cache-control", "max-age=60")]).await.0,
        Outcome::Hit
    );
    assert_eq!(origin.calls(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_no_cache_requests_costs_one_origin_call() {
    let origin = Origin::gated();
    let (layer, svc) = origin.layered(stored());
    answer(&svc, &[]).await;
    let flood: Vec<_> = (0..50)
        .map(|_| tokio::spawn(answer(&svc, &[("cache-control", "no-cache")])))
        .collect();
    until(&layer, "the flood to join one flight", |s| {
        s.followers == 49
    })
    .await;
    if let Some(gate) = &*origin.gate {
        gate.add_permits(1);
    }
    for call in flood {
        let (_, status, text) = call.await.unwrap();
        assert_eq!((status, text.as_str()), (StatusCode::OK, "answer 2"));
    }
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn only_if_cached_is_answered_from_storage_or_with_504() {
    let origin = Origin::default();
    let (_, svc) = origin.layered(stored());
    let only = [("cache-control", "only-if-cached")];
    assert_eq!(
        answer(&svc, &only).await,
        (
            Outcome::NotCached,
            StatusCode::GATEWAY_TIMEOUT,
            "only-if-cached: no stored answer\n".into()
        )
    );
    assert_eq!(origin.calls(), 0);
    answer(&svc, &[]).await;
    assert_eq!(answer(&svc, &only).await.0, Outcome::Hit);
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn client_directives_can_be_ignored() {
    let origin = Origin::default();
    let (_, svc) = origin.layered(stored().client_directives(false));
    answer(&svc, &[]).await;
    assert_eq!(
        answer(&svc, &[("cache-control", "no-cache")]).await.0,
        Outcome::Hit
    );
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_no_store_request_alone_goes_to_the_origin_and_its_answer_is_not_stored() {
    let origin = Origin::default();
    let (layer, svc) = origin.layered(stored());
    let no_store = [("cache-control", "no-store")];
    let (outcome, _, text) = answer(&svc, &no_store).await;
    assert_eq!((outcome, text.as_str()), (Outcome::Pass, "answer 1"));
    assert_eq!(layer.stats().stored, 0, "RFC 9111 §5.2.1.5");
    // The next plain request leads, and its answer is stored as usual.
    assert_eq!(answer(&svc, &[]).await.0, Outcome::Leader);
    // A no-store request may be answered from storage.
    assert_eq!(answer(&svc, &no_store).await.0, Outcome::Hit);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_requests_join_a_flight_but_never_lead_one() {
    let origin = Origin::gated();
    let (layer, svc) = origin.layered(stored());
    // The first call passes the gate; it is a no-store one, alone.
    answer(&svc, &[("cache-control", "no-store")]).await;
    // A plain request leads; a flood of no-store requests joins it.
    let leader = tokio::spawn(answer(&svc, &[]));
    until(&layer, "the flight", |s| s.flights == 1).await;
    let flood: Vec<_> = (0..20)
        .map(|_| tokio::spawn(answer(&svc, &[("cache-control", "no-store")])))
        .collect();
    until(&layer, "the flood to join the flight", |s| {
        s.followers == 20
    })
    .await;
    if let Some(gate) = &*origin.gate {
        gate.add_permits(1);
    }
    assert_eq!(leader.await.unwrap().0, Outcome::Leader);
    for call in flood {
        assert_eq!(call.await.unwrap().0, Outcome::Follower);
    }
    assert_eq!(origin.calls(), 2);
    assert_eq!(
        layer.stats().stored,
        1,
        "the plain request's answer is stored"
    );
}

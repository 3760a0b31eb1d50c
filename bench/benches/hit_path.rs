//! The cost of the layer on its commonest path: a cached hit, against the bare
//! inner service answering the same request, in the same run.
//!
//! ```text
//! cargo bench -p coalesce-bench --bench hit_path
//! ```

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{Empty, Full};
use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer};

fn request() -> Request<Empty<Bytes>> {
    Request::get("http://api.example/products/7?lang=en")
        .header("accept", "application/json")
        .body(Empty::new())
        .unwrap()
}

fn hit_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = Bytes::from(vec![b'x'; 1024]);
    let answer = body.clone();
    let origin = tower::service_fn(move |_req: Request<Empty<Bytes>>| {
        let body = answer.clone();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .unwrap(),
            )
        }
    });
    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(3600)));
    let mut layered = layer.layer(origin.clone());
    rt.block_on(async {
        layered
            .ready()
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap()
    });
    assert_eq!(
        layer.stats().stored,
        1,
        "the entry must be cached before measuring hits"
    );

    let mut group = c.benchmark_group("hit_path");
    let mut bare = origin;
    group.bench_function("bare_service", |b| {
        b.to_async(&rt).iter(|| {
            let fut = bare.call(request());
            async move { black_box(fut.await.unwrap()) }
        })
    });
    group.bench_function("coalesce_cached_hit", |b| {
        b.to_async(&rt).iter(|| {
            let fut = layered.call(request());
            async move { black_box(fut.await.unwrap()) }
        })
    });
    group.finish();
    assert!(layer.stats().hits > 0);
    assert_eq!(layer.stats().origin_calls, 1);
}

criterion_group!(benches, hit_path);
criterion_main!(benches);

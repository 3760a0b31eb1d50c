//! The cost of the layer on its commonest path: a cached hit, against the bare
//! inner service answering the same request, in the same run.
//!
//! ```text
//! cargo bench -p coalesce-bench --bench hit_path
//! ```

use coalesce_bench::hit::{layer, origin, request};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use tower::{Layer, Service, ServiceExt};

fn hit_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let origin = origin();
    let layer = layer();
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

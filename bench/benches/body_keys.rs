//! The cost of keying a request by its body: canonicalising a typical
//! GraphQL query (JSON, then the document: read before, or parsed), and a stored body-keyed
//! answer's hit through the whole stack (reading the body, keying it,
//! answering from the cache), beside the bare service and the `GET` hit
//! path of `hit_path`, in one run.
//!
//! ```text
//! cargo bench -p coalesce-bench --features graphql --bench body_keys
//! ```

use bytes::Bytes;
use coalesce_bench::hit;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_coalesce::body_keys::{canonical_json, BodyKeys, BufferedBody, RequestBody, Route};
use tower_coalesce::{CoalesceConfig, CoalesceLayer, HttpKey, KeyExtractor};

/// A typical client query: an operation with variables, a fragment, a
/// nested selection, an alias and a directive (689 bytes).
const QUERY: &str = r#"{"operationName":"ProductPage","variables":{"id":"7","locale":"en-GB","first":10,"withReviews":true},"query":"query ProductPage($id: ID!, $locale: String!, $first: Int = 10, $withReviews: Boolean!) {\n  product(id: $id) {\n    ...ProductCard\n    description(locale: $locale)\n    related: recommendations(first: $first) { ...ProductCard }\n    reviews(first: 5) @include(if: $withReviews) {\n      edges { node { id rating title author { name } } }\n    }\n  }\n}\n\nfragment ProductCard on Product {\n  id\n  name\n  price { amount currency }\n  images(size: THUMBNAIL) { url alt }\n}\n"}"#;

fn keys() -> BodyKeys {
    BodyKeys::new(HttpKey::new()).route(Route::graphql("/graphql").stored())
}

fn post() -> Request<Full<Bytes>> {
    Request::post("http://api.example/graphql")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(Full::new(Bytes::from_static(QUERY.as_bytes())))
        .unwrap()
}

fn body_keys(c: &mut Criterion) {
    let keys = keys();
    let mut read = post();
    read.extensions_mut()
        .insert(RequestBody(Bytes::from_static(QUERY.as_bytes())));
    assert!(keys.extract(&read).is_some());

    let mut group = c.benchmark_group("body_keys");
    group.bench_function("canonical_json", |b| {
        b.iter(|| black_box(canonical_json(black_box(QUERY.as_bytes()))))
    });
    // A document seen before: its normal form from the route's cache.
    group.bench_function("graphql_key", |b| {
        b.iter(|| black_box(keys.extract(black_box(&read))))
    });
    // A document seen for the first time: parsed and printed.
    let parsing = BodyKeys::new(HttpKey::new()).route(Route::graphql("/graphql").document_cache(0));
    group.bench_function("graphql_key_parsed", |b| {
        b.iter(|| black_box(parsing.extract(black_box(&read))))
    });

    // The whole stack: a stored answer for the query, then hits.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let origin = tower::service_fn(|_req: Request<BufferedBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![b'x'; 1024]))))
    });
    let layer = CoalesceLayer::builder(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(3600))
            .methods(keys.methods()),
    )
    .extractor(keys.clone())
    .build()
    .unwrap();
    let mut stack = ServiceBuilder::new()
        .layer(keys.buffer_layer())
        .layer(layer.clone())
        .service(origin);
    rt.block_on(async { stack.ready().await.unwrap().call(post()).await.unwrap() });
    assert_eq!(layer.stats().stored, 1, "stored before measuring hits");
    group.bench_function("graphql_cached_hit", |b| {
        b.to_async(&rt).iter(|| {
            let fut = stack.call(post());
            async move { black_box(fut.await.unwrap()) }
        })
    });
    assert_eq!(layer.stats().origin_calls, 1);

    // The `GET` hit path, and the bare service, in the same run.
    let mut bare = hit::origin();
    group.bench_function("bare_service", |b| {
        b.to_async(&rt).iter(|| {
            let fut = bare.call(hit::request());
            async move { black_box(fut.await.unwrap()) }
        })
    });
    let get_layer = hit::layer();
    let mut get_hit = get_layer.layer(hit::origin());
    rt.block_on(async {
        get_hit
            .ready()
            .await
            .unwrap()
            .call(hit::request())
            .await
            .unwrap()
    });
    group.bench_function("get_cached_hit", |b| {
        b.to_async(&rt).iter(|| {
            let fut = get_hit.call(hit::request());
            async move { black_box(fut.await.unwrap()) }
        })
    });
    group.finish();
}

criterion_group!(benches, body_keys);
criterion_main!(benches);

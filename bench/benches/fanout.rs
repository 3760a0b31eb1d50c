//! Fan-out: how long one answer takes to reach N waiting tasks, from the
//! moment the origin returns to the moment the last waiter has it, against
//! other ways of sharing one computation, in the same run.
//!
//! ```text
//! cargo bench -p coalesce-bench --bench fanout
//! ```
//!
//! A million waiters is left to `bench/src/bin/fanout.rs`: one round of them takes
//! seconds to set up, and criterion needs at least eleven rounds per
//! contender.
//!
//! Contenders, on one 2-worker runtime, with the same task shape:
//! - `ours`: `CoalesceLayer` with the default configuration over a
//!   `service_fn`; each task calls `oneshot` and reads the response body.
//!   The request carries one `Accept` header, as in `hit_path`: a follower
//!   keeps its request while it waits, so its cost grows with the request.
//! - `async_singleflight`: `Group::work`.
//! - `async_singleflight_http`: an HTTP single-flight on `Group::work`
//!   doing what any HTTP answer takes per waiter: it holds the same
//!   request until answered and gets a response of its own (headers
//!   cloned, body shared) marked with an extension. The floor for
//!   `ours` with `http` types.
//! - `moka_get_with`: `moka::future::Cache::get_with`.
//! - `floor`: N tasks awaiting one `tokio::sync::Notify`, woken by
//!   `notify_waiters` from a task: what Tokio itself needs to wake N tasks.
//!
//! A round spawns N waiters, waits until every one of them has joined and the
//! workers are idle, then opens the origin's gate. The origin notes when it
//! returns; the last waiter to get its answer notes when it did. Only their
//! difference is reported: spawning and tearing down are not measured.

use coalesce_bench::fanout::{contender, round, CONTENDERS};
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use std::time::Duration;

/// How long a round waits for anything before it gives up.
const WAIT_LIMIT: Duration = Duration::from_secs(120);

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let contenders = CONTENDERS.map(contender);

    let mut group = c.benchmark_group("fanout");
    // A round costs far more than the time it reports (spawning, waiting for
    // idle workers, tearing down): flat sampling keeps the run's length
    // proportional to the measurement time.
    group.sampling_mode(SamplingMode::Flat);
    for (n, samples, secs) in [(1_000, 50, 3), (10_000, 30, 4), (100_000, 10, 8)] {
        group
            .sample_size(samples)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(secs))
            .throughput(Throughput::Elements(n as u64));
        for &contender in &contenders {
            group.bench_with_input(BenchmarkId::new(contender.name(), n), &n, |b, &n| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| round(&rt, contender, n, WAIT_LIMIT).0)
                        .sum()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);

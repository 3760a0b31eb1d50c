//! A fixed number of cached hits (or bare calls), for counting instructions
//! with callgrind: repeatable where wall-clock timings on a shared machine
//! are not.
//!
//! ```text
//! cargo build --release -p coalesce-bench --bin hit_probe [--features metrics]
//! for mode in bare hit; do for n in 1000 21000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     --toggle-collect=hit_probe::measure \
//!     target/release/hit_probe $mode $n 2>&1 | grep Collected
//! done; done
//! ```
//! Instructions per request: (count at 21,000 − count at 1,000) / 20,000;
//! the layer's cost per hit is the `hit` figure less the `bare` one. The
//! request, answer and layer are `coalesce_bench::hit`'s, as in `bench/benches/hit_path.rs`.
//! `--toggle-collect` counts the requests alone (`measure`), not the
//! set-up: a recorder's clock calibration, for one, takes a varying time.
//!
//! Besides `bare` and `hit` (no subscriber, no recorder installed):
//! `hit-info` and `hit-debug` run the hits under a `tracing` subscriber at
//! INFO (the layer's DEBUG spans off) or at DEBUG (a span per request),
//! writing nowhere; `hit-recorded`, built with `--features metrics`, under
//! an installed Prometheus recorder.

use coalesce_bench::hit::{layer, origin, request};
use tower::{Layer, Service, ServiceExt};
use tower_coalesce::CoalesceLayer;
use tracing_subscriber::filter::LevelFilter;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(n)) = (args.next(), args.next().and_then(|n| n.parse().ok())) else {
        eprintln!("usage: hit_probe bare|hit|hit-info|hit-debug|hit-recorded N");
        std::process::exit(2);
    };
    let level = match mode.as_str() {
        "hit-info" => Some(LevelFilter::INFO),
        "hit-debug" => Some(LevelFilter::DEBUG),
        _ => None,
    };
    if let Some(level) = level {
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(std::io::sink)
            .init();
    }
    if mode == "hit-recorded" {
        record();
    }
    let layer = layer();
    measure(&layer, mode != "bare", n);
}

/// The first request (which stores the answer), then `n` hits or bare
/// calls: what callgrind counts.
#[inline(never)]
fn measure(layer: &CoalesceLayer, hits: bool, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let origin = origin();
    let mut layered = layer.layer(origin.clone());
    let mut bare = origin;
    rt.block_on(async {
        // Stored first, in both modes, so that both do the same set-up.
        layered
            .ready()
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap();
        for _ in 0..n {
            if hits {
                std::hint::black_box(layered.call(request()).await.unwrap());
            } else {
                std::hint::black_box(bare.call(request()).await.unwrap());
            }
        }
    });
    if hits {
        assert_eq!(layer.stats().origin_calls, 1, "every request was a hit");
    }
}

#[cfg(feature = "metrics")]
fn record() {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder");
}

#[cfg(not(feature = "metrics"))]
fn record() {
    eprintln!("hit-recorded needs --features metrics");
    std::process::exit(2);
}

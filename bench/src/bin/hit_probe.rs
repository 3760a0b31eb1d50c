//! A fixed number of cached hits (or bare calls), for counting instructions
//! with callgrind: repeatable where wall-clock timings on a shared machine
//! are not.
//!
//! ```text
//! cargo build --release -p coalesce-bench --bin hit_probe
//! for mode in bare hit; do for n in 1000 21000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/hit_probe $mode $n 2>&1 | grep Collected
//! done; done
//! ```
//! Instructions per request: (count at 21,000 − count at 1,000) / 20,000;
//! the layer's cost per hit is the `hit` figure less the `bare` one. The
//! request, answer and layer are `coalesce_bench::hit`'s, as in `bench/benches/hit_path.rs`.

use coalesce_bench::hit::{layer, origin, request};
use tower::{Layer, Service, ServiceExt};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(n)) = (args.next(), args.next().and_then(|n| n.parse().ok())) else {
        eprintln!("usage: hit_probe bare|hit N");
        std::process::exit(2);
    };
    let hits = mode == "hit";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let origin = origin();
    let layer = layer();
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

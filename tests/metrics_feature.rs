//! With the `metrics` feature, every counter of `Stats` is also reported to
//! the `metrics` facade as `coalesce_<name>_total`, labelled with the
//! layer's `metrics_label`; a Prometheus exporter renders them.
#![cfg(feature = "metrics")]

mod support;

use metrics_exporter_prometheus::PrometheusBuilder;
use support::{echo_path, get, until, Origin};
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer};

/// The value of `name` for the layer labelled `default`.
fn value(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.strip_prefix("{layer=\"default\"} ")?.parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_reach_the_installed_recorder() {
    // The only test in this binary: the recorder is process-wide.
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("no other recorder in this test binary");
    let origin = Origin::gated();
    let layer = CoalesceLayer::new(CoalesceConfig::new());
    let svc = layer.layer(origin.serve(echo_path));
    let calls: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/m"))))
        .collect();
    until(&layer, "the followers", |s| s.followers == 9).await;
    origin.open_gate();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let text = handle.render();
    let stats = layer.stats();
    assert!(
        text.contains("# HELP coalesce_origin_calls_total Calls made to the inner service"),
        "{text}"
    );
    assert_eq!(
        value(&text, "coalesce_requests_total"),
        Some(stats.requests)
    );
    assert_eq!(value(&text, "coalesce_origin_calls_total"), Some(1));
    assert_eq!(value(&text, "coalesce_followers_total"), Some(9));
    assert_eq!(value(&text, "coalesce_flights_total"), Some(1));
    // `Stats::counters` names them as the facade does: every counter that
    // moved is exported under its name, with its value.
    for (name, count) in stats.counters() {
        if count > 0 {
            assert_eq!(value(&text, name), Some(count), "{name}");
        }
    }
}

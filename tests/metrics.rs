//! The `metrics` feature's series, read from a recorder of the test's own:
//! a burst's flight, origin call, follower waits and backend calls as
//! histograms, responses by outcome, the gauges, the `layer` label on every
//! series, and the descriptions with their units — for a recorder
//! installed after the layer was built.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer};

/// Every series registered with it, every description, and how many
/// handles it handed out.
#[derive(Default)]
struct Recorded {
    counters: Mutex<HashMap<Key, Arc<AtomicU64>>>,
    gauges: Mutex<HashMap<Key, Arc<Level>>>,
    histograms: Mutex<HashMap<Key, Arc<Samples>>>,
    described: Mutex<HashMap<String, (Option<Unit>, String)>>,
    registered: AtomicUsize,
}

/// A gauge's last value, and the highest it was set to.
#[derive(Default)]
struct Level(Mutex<(f64, f64)>);

impl GaugeFn for Level {
    fn increment(&self, value: f64) {
        self.change(|now| now + value);
    }
    fn decrement(&self, value: f64) {
        self.change(|now| now - value);
    }
    fn set(&self, value: f64) {
        self.change(|_| value);
    }
}

impl Level {
    fn change(&self, to: impl FnOnce(f64) -> f64) {
        let mut level = self.0.lock().unwrap();
        let value = to(level.0);
        *level = (value, level.1.max(value));
    }
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

struct Counted(Arc<AtomicU64>);

impl CounterFn for Counted {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

impl Recorder for Recorded {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registered.fetch_add(1, Ordering::Relaxed);
        let mut counters = self.counters.lock().unwrap();
        let value = counters.entry(key.clone()).or_default().clone();
        Counter::from_arc(Arc::new(Counted(value)))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registered.fetch_add(1, Ordering::Relaxed);
        let mut gauges = self.gauges.lock().unwrap();
        Gauge::from_arc(gauges.entry(key.clone()).or_default().clone())
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.registered.fetch_add(1, Ordering::Relaxed);
        let mut histograms = self.histograms.lock().unwrap();
        Histogram::from_arc(histograms.entry(key.clone()).or_default().clone())
    }
}

impl Recorded {
    fn describe(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        let mut described = self.described.lock().unwrap();
        described.insert(key.as_str().to_owned(), (unit, description.to_string()));
    }

    fn find<T: Clone>(
        map: &Mutex<HashMap<Key, T>>,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<T> {
        let map = map.lock().unwrap();
        let found = map.iter().find(|(key, _)| {
            let mut have: Vec<_> = key.labels().map(|l| (l.key(), l.value())).collect();
            let mut want = labels.to_vec();
            have.sort();
            want.sort();
            key.name() == name && have == want
        });
        found.map(|(_, value)| value.clone())
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        Self::find(&self.counters, name, labels).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        Self::find(&self.histograms, name, labels)
            .map(|s| s.0.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// A gauge's last value and the highest it was set to.
    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<(f64, f64)> {
        Self::find(&self.gauges, name, labels).map(|g| *g.0.lock().unwrap())
    }

    /// The labels of every series registered.
    fn every_label(&self) -> Vec<(String, Vec<(String, String)>)> {
        let mut keys: Vec<Key> = self.counters.lock().unwrap().keys().cloned().collect();
        keys.extend(self.gauges.lock().unwrap().keys().cloned());
        keys.extend(self.histograms.lock().unwrap().keys().cloned());
        keys.iter()
            .map(|key| {
                let labels = key.labels();
                let labels = labels.map(|l| (l.key().to_owned(), l.value().to_owned()));
                (key.name().to_owned(), labels.collect())
            })
            .collect()
    }
}

type Req = Request<Full<Bytes>>;

/// An origin that takes 30 ms, and counts its calls.
fn origin(
    calls: Arc<AtomicUsize>,
) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone {
    tower::service_fn(move |_req: Req| {
        calls.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"answer"))))
        }
    })
}

fn get(path: &str) -> Req {
    Request::get(path).body(Full::new(Bytes::new())).unwrap()
}

/// Runs `work` on a runtime of this thread with `recorder` installed for it:
/// the layer's tasks run here too, so they report to it.
fn recorded<F: std::future::Future>(recorder: &Recorded, work: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(recorder, || runtime.block_on(work))
}

const BURST: usize = 8;

#[test]
fn a_recorder_installed_after_the_layer_was_built_gets_every_series_of_a_burst() {
    let layer = CoalesceLayer::new(
        CoalesceConfig::new()
            .ttl(Duration::from_secs(60))
            .metrics_label("api"),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(origin(calls.clone()));
    let recorder = Recorded::default();
    recorded(&recorder, async {
        let burst = (0..BURST).map(|_| svc.clone().oneshot(get("/burst")));
        for res in futures_util::future::join_all(burst).await {
            assert_eq!(res.unwrap().status(), 200);
        }
        // Stored: answered from memory.
        svc.clone().oneshot(get("/burst")).await.unwrap();
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one origin call");
    let api = [("layer", "api")];

    let origin = recorder.samples("coalesce_origin_duration_seconds", &api);
    assert_eq!(origin.len(), 1, "{origin:?}");
    assert!(origin[0] >= 0.025, "the origin's 30 ms: {origin:?}");
    let flight = recorder.samples("coalesce_flight_duration_seconds", &api);
    assert_eq!(flight.len(), 1, "{flight:?}");
    assert!(flight[0] >= origin[0], "{flight:?} {origin:?}");
    let waits = recorder.samples("coalesce_follower_wait_seconds", &api);
    assert_eq!(waits.len(), BURST - 1, "{waits:?}");
    assert!(
        waits.iter().all(|w| *w >= 0.025),
        "they waited for the origin: {waits:?}"
    );

    let responses = |outcome| {
        let labels = [("layer", "api"), ("outcome", outcome)];
        recorder.counter("coalesce_responses_total", &labels)
    };
    assert_eq!(responses("leader"), 1);
    assert_eq!(responses("follower"), BURST as u64 - 1);
    assert_eq!(responses("hit"), 1);
    assert_eq!(responses("bypass"), 0);
    // The per-event counters are still there, under their names.
    let requests = recorder.counter("coalesce_requests_total", &api);
    assert_eq!(requests, BURST as u64 + 1);
    assert_eq!(
        recorder.counter("coalesce_followers_total", &api),
        BURST as u64 - 1
    );
    assert_eq!(recorder.counter("coalesce_origin_calls_total", &api), 1);

    // The flight's backend calls: one lookup, one lease, one completion.
    for op in ["find", "try_lock", "complete"] {
        let labels = [("layer", "api"), ("op", op)];
        let took = recorder.samples("coalesce_backend_call_duration_seconds", &labels);
        assert_eq!(took.len(), 1, "{op}: {took:?}");
    }
    let stores = [("layer", "api"), ("op", "store")];
    assert!(recorder
        .samples("coalesce_backend_call_duration_seconds", &stores)
        .is_empty());

    // One flight under way at its height, none now.
    let flights = recorder.gauge("coalesce_flights_in_progress", &api);
    assert_eq!(flights, Some((0.0, 1.0)));
    // The answer held in memory: its key and its six bytes at least.
    let entries = recorder.gauge("coalesce_near_cache_entries", &api);
    assert_eq!(entries.map(|(now, _)| now), Some(1.0));
    let bytes = recorder.gauge("coalesce_near_cache_bytes", &api).unwrap().0;
    assert!(bytes > 6.0, "{bytes}");

    // Every series this layer reports carries its label.
    let every = recorder.every_label();
    assert!(every.len() > 40, "{} series", every.len());
    for (name, labels) in &every {
        assert!(
            labels.contains(&("layer".to_owned(), "api".to_owned())),
            "{name} {labels:?}"
        );
    }

    // Described, with units.
    let described = recorder.described.lock().unwrap();
    let expected = [
        ("coalesce_flight_duration_seconds", Unit::Seconds),
        ("coalesce_follower_wait_seconds", Unit::Seconds),
        ("coalesce_origin_duration_seconds", Unit::Seconds),
        ("coalesce_backend_call_duration_seconds", Unit::Seconds),
        ("coalesce_flights_in_progress", Unit::Count),
        ("coalesce_near_cache_entries", Unit::Count),
        ("coalesce_near_cache_bytes", Unit::Bytes),
        ("coalesce_responses_total", Unit::Count),
        ("coalesce_requests_total", Unit::Count),
        ("coalesce_origin_calls_total", Unit::Count),
    ];
    for (name, unit) in expected {
        let (got, help) = described
            .get(name)
            .unwrap_or_else(|| panic!("{name} undescribed"));
        assert_eq!(got.as_ref(), Some(&unit), "{name}");
        assert!(help.len() > 10, "{name}: {help:?}");
    }
    // Every series registered is described.
    for (name, _) in &every {
        assert!(described.contains_key(name), "{name} undescribed");
    }
}

#[test]
fn handles_are_registered_once_per_layer_and_kept() {
    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let svc = layer.layer(origin(Arc::default()));
    let recorder = Recorded::default();
    let first = recorded(&recorder, async {
        svc.clone().oneshot(get("/once")).await.unwrap();
        recorder.registered.load(Ordering::Relaxed)
    });
    recorded(&recorder, async {
        for _ in 0..50 {
            svc.clone().oneshot(get("/once")).await.unwrap();
            svc.clone().oneshot(get("/other")).await.unwrap();
        }
    });
    assert!(first > 40, "registered {first}");
    assert_eq!(
        recorder.registered.load(Ordering::Relaxed),
        first,
        "nothing registered again: every increment used a kept handle"
    );
    let labels = [("layer", "default"), ("outcome", "hit")];
    assert_eq!(recorder.counter("coalesce_responses_total", &labels), 99);
}

#[test]
fn two_layers_in_one_process_are_told_apart_by_their_label() {
    let recorder = Recorded::default();
    let api = CoalesceLayer::new(CoalesceConfig::new().metrics_label("api"));
    let admin = CoalesceLayer::new(CoalesceConfig::new().metrics_label("admin"));
    recorded(&recorder, async {
        let api = api.layer(origin(Arc::default()));
        let admin = admin.layer(origin(Arc::default()));
        api.clone().oneshot(get("/a")).await.unwrap();
        api.clone().oneshot(get("/a")).await.unwrap();
        admin.clone().oneshot(get("/b")).await.unwrap();
    });
    let requests = |layer| recorder.counter("coalesce_requests_total", &[("layer", layer)]);
    assert_eq!((requests("api"), requests("admin")), (2, 1));
    let flights = |layer| {
        let samples = recorder.samples("coalesce_flight_duration_seconds", &[("layer", layer)]);
        samples.len()
    };
    assert_eq!((flights("api"), flights("admin")), (2, 1));
}

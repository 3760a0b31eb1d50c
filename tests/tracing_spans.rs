//! The layer's spans, read by a subscriber layer of the test's own: one
//! `coalesce.request` per keyed request with OpenTelemetry's HTTP fields,
//! its outcome and key fingerprint; one `coalesce.flight` per flight,
//! child of its leader's request, with the leader's role and its follower
//! count at landing; followers' spans follow from their flight's.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer, HttpKey, KeyExtractor};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(u64),
    Text(String),
}

/// A span as recorded: its name, fields, parent and the spans it follows
/// from (by their place in [`Spans`]).
#[derive(Debug, Default)]
struct Recorded {
    name: &'static str,
    fields: HashMap<&'static str, Value>,
    parent: Option<usize>,
    follows: Vec<usize>,
}

/// Every span made, in order; span ids are reused once a span closes, so
/// they are mapped to places as spans are made.
#[derive(Default)]
struct Log {
    spans: Vec<Recorded>,
    places: HashMap<u64, usize>,
}

#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Log>>);

struct Fields<'a>(&'a mut HashMap<&'static str, Value>);

impl Visit for Fields<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name(), Value::Int(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name(), Value::Int(value as u64));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), Value::Text(value.to_owned()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name(), Value::Text(format!("{value:?}")));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent = if attrs.is_contextual() {
            ctx.current_span().id().cloned()
        } else {
            attrs.parent().cloned()
        };
        let mut log = self.0.lock().unwrap();
        let Log { spans, places } = &mut *log;
        let mut span = Recorded {
            name: attrs.metadata().name(),
            parent: parent.and_then(|p| places.get(&p.into_u64()).copied()),
            ..Recorded::default()
        };
        attrs.record(&mut Fields(&mut span.fields));
        places.insert(id.into_u64(), spans.len());
        spans.push(span);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut log = self.0.lock().unwrap();
        let Log { spans, places } = &mut *log;
        let place = places[&id.into_u64()];
        values.record(&mut Fields(&mut spans[place].fields));
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, _: Context<'_, S>) {
        let mut log = self.0.lock().unwrap();
        let Log { spans, places } = &mut *log;
        let (place, from) = (places[&id.into_u64()], places[&follows.into_u64()]);
        spans[place].follows.push(from);
    }
}

type Req = Request<Full<Bytes>>;

fn get(path: &str) -> Req {
    Request::get(path).body(Full::new(Bytes::new())).unwrap()
}

fn text(value: &str) -> Option<Value> {
    Some(Value::Text(value.to_owned()))
}

impl Recorded {
    fn field(&self, name: &str) -> Option<Value> {
        self.fields.get(name).cloned()
    }
}

const BURST: usize = 5;

#[tokio::test]
async fn requests_and_flights_have_spans_with_their_fields_and_followers_follow_the_flight() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let origin = tower::service_fn(|_req: Req| async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"answer"))))
    });
    let svc = layer.layer(origin);
    let burst = (0..BURST).map(|_| svc.clone().oneshot(get("/traced")));
    for res in futures_util::future::join_all(burst).await {
        assert_eq!(res.unwrap().status(), 200);
    }
    // Stored by now: a hit.
    svc.clone().oneshot(get("/traced")).await.unwrap();

    let key = HttpKey::new().extract(&get("/traced")).unwrap();
    let fingerprint = key.fingerprint().to_string();
    let log = spans.0.lock().unwrap();
    let spans = &log.spans;
    let requests: Vec<(usize, &Recorded)> = spans
        .iter()
        .enumerate()
        .filter(|(_, s)| s.name == "coalesce.request")
        .collect();
    assert_eq!(requests.len(), BURST + 1, "{spans:#?}");
    for (_, span) in &requests {
        assert_eq!(span.field("http.request.method"), text("GET"));
        assert_eq!(
            span.field("http.response.status_code"),
            Some(Value::Int(200)),
            "an integer: {span:?}"
        );
        assert_eq!(span.field("coalesce.key"), text(&fingerprint));
    }
    let outcome = |span: &Recorded| match span.fields.get("coalesce.outcome") {
        Some(Value::Text(outcome)) => outcome.clone(),
        other => panic!("no outcome: {other:?}"),
    };
    let with = |wanted: &str| {
        let found = requests.iter().filter(|(_, s)| outcome(s) == wanted);
        found.map(|(place, _)| *place).collect::<Vec<_>>()
    };
    let (leader, followers, hits) = (with("leader"), with("follower"), with("hit"));
    assert_eq!(
        (leader.len(), followers.len(), hits.len()),
        (1, BURST - 1, 1)
    );

    let flights: Vec<(usize, &Recorded)> = spans
        .iter()
        .enumerate()
        .filter(|(_, s)| s.name == "coalesce.flight")
        .collect();
    assert_eq!(flights.len(), 1, "one flight: {spans:#?}");
    let (flight, span) = flights[0];
    assert_eq!(span.field("coalesce.key"), text(&fingerprint));
    assert_eq!(span.field("coalesce.role"), text("leader"));
    assert_eq!(
        span.field("coalesce.followers"),
        Some(Value::Int(BURST as u64 - 1))
    );
    assert_eq!(
        span.parent,
        Some(leader[0]),
        "a child of its leader's request"
    );
    for follower in followers {
        assert_eq!(spans[follower].follows, [flight], "{:?}", spans[follower]);
    }
    assert!(spans[leader[0]].follows.is_empty());
    assert!(spans[hits[0]].follows.is_empty());
}

#[tokio::test]
async fn with_debug_off_requests_make_no_span() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing::level_filters::LevelFilter::INFO)
        .with(spans.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let layer = CoalesceLayer::new(CoalesceConfig::new().ttl(Duration::from_secs(60)));
    let origin = tower::service_fn(|_req: Req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"answer"))))
    });
    let svc = layer.layer(origin);
    for _ in 0..3 {
        let res = svc.clone().oneshot(get("/quiet")).await.unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(layer.stats().hits, 2);
    let log = spans.0.lock().unwrap();
    assert!(log.spans.is_empty(), "{:#?}", log.spans);
}

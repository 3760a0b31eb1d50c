//! The stack of the body-key tests: `BufferLayer`, the coalescing layer,
//! and an origin that records what it was sent.

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_coalesce::body_keys::{BodyKeys, BufferedBody};
use tower_coalesce::{CoalesceBody, CoalesceConfig, CoalesceLayer};

/// Request bodies: any frames (an error type without lifetimes, so that
/// the service is `Send` across tasks).
pub type In = BoxBody<Bytes, std::io::Error>;

/// What the origin was sent: data frames and trailers of each call.
pub type Sent = Vec<(Vec<Bytes>, Option<HeaderMap>)>;

/// Counts calls, records what each was sent, and holds its answer until
/// the gate opens. The answer names the body and `Authorization` it got.
#[derive(Clone)]
pub struct Origin {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    sent: Arc<Mutex<Sent>>,
}

impl Origin {
    pub fn gated() -> Self {
        Self {
            calls: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            sent: Arc::default(),
        }
    }

    pub fn open() -> Self {
        let origin = Self::gated();
        origin.open_gate();
        origin
    }

    pub fn open_gate(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn sent(&self) -> Sent {
        self.sent.lock().unwrap().clone()
    }
}

pub type Svc = tower::util::BoxCloneService<Request<In>, Response<Bytes>, BoxError>;

/// The stack: `keys`' buffer layer, the coalescing layer keyed by `keys`,
/// the origin; answers collected whole.
pub fn stack(
    keys: BodyKeys,
    config: CoalesceConfig,
    origin: &Origin,
) -> (Svc, CoalesceLayer<BodyKeys>) {
    let layer = CoalesceLayer::builder(config.methods(keys.methods()))
        .extractor(keys.clone())
        .build()
        .unwrap();
    let origin = origin.clone();
    let inner = tower::service_fn(move |req: Request<BufferedBody<In>>| {
        let origin = origin.clone();
        async move {
            origin.calls.fetch_add(1, Ordering::SeqCst);
            let auth = req.headers().get(header::AUTHORIZATION).cloned();
            let mut body = req.into_body();
            let (mut data, mut trailers) = (Vec::new(), None);
            while let Some(frame) = body.frame().await {
                match frame?.into_data() {
                    Ok(chunk) => data.push(chunk),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                }
            }
            let whole: Vec<u8> = data.iter().flat_map(|c| c.to_vec()).collect();
            origin.sent.lock().unwrap().push((data, trailers));
            origin.gate.acquire().await?.forget();
            let auth = auth.map(|a| a.to_str().unwrap_or("?").to_owned());
            let answer = format!("{} for {auth:?}", String::from_utf8_lossy(&whole));
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(answer))))
        }
    });
    let svc = ServiceBuilder::new()
        .layer(keys.buffer_layer())
        .layer(layer.clone())
        .service(inner)
        .and_then(|res: Response<CoalesceBody<Full<Bytes>>>| async move {
            let (head, body) = res.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, BoxError>(Response::from_parts(head, body))
        });
    (Svc::new(svc), layer)
}

pub fn post(path: &str, body: &str) -> Request<In> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::copy_from_slice(body.as_bytes()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

/// Waits until the origin has been called `n` times.
pub async fn until_calls(origin: &Origin, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while origin.calls() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} calls",
            origin.calls()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Sends every request at once; the answers in order.
pub async fn burst(
    svc: &Svc,
    reqs: Vec<Request<In>>,
) -> Vec<tokio::task::JoinHandle<Result<Response<Bytes>, BoxError>>> {
    reqs.into_iter()
        .map(|req| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot(req).await })
        })
        .collect()
}

pub async fn answers(
    tasks: Vec<tokio::task::JoinHandle<Result<Response<Bytes>, BoxError>>>,
) -> Vec<Bytes> {
    let mut out = Vec::new();
    for task in tasks {
        let res = task.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        out.push(res.into_body());
    }
    out
}

//! The admin listener, apart from the public port: `/healthz` (the process
//! is up), `/readyz` (ready for traffic; `degraded` while Redis does not
//! answer and the proxy coalesces within itself only; `503` once it drains
//! at shutdown), and `/metrics` (the layer's metrics in Prometheus text).

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower_coalesce::RedisBackend;

/// How long `/readyz` waits for Redis to answer a `PING`.
const PING_LIMIT: Duration = Duration::from_millis(500);

/// What the admin endpoints answer from: whether the proxy drains, the
/// Redis it shares answers through, and the metrics it renders. Clones
/// share one state.
#[derive(Clone, Default)]
pub struct Admin {
    draining: Arc<AtomicBool>,
    redis: Option<RedisBackend>,
    metrics: Option<PrometheusHandle>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("draining", &self.draining.load(Ordering::Relaxed))
            .field("redis", &self.redis.is_some())
            .field("metrics", &self.metrics.is_some())
            .finish()
    }
}

impl Admin {
    /// The admin state of a proxy sharing answers through `redis` (if any),
    /// rendering `metrics` (if a recorder was installed).
    pub fn new(redis: Option<RedisBackend>, metrics: Option<PrometheusHandle>) -> Self {
        Self {
            draining: Arc::default(),
            redis,
            metrics,
        }
    }

    /// From now on `/readyz` answers `503 draining`: load balancers stop
    /// sending new requests before the proxy stops accepting them.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => self.readiness().await,
            "/metrics" => match &self.metrics {
                Some(handle) => {
                    let mut res = text(StatusCode::OK, handle.render());
                    res.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    res
                }
                None => text(StatusCode::NOT_FOUND, "no metrics recorder\n".into()),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: /healthz, /readyz or /metrics\n".into(),
            ),
        }
    }

    async fn readiness(&self) -> Response<Full<Bytes>> {
        if self.draining.load(Ordering::Relaxed) {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
        }
        let Some(redis) = &self.redis else {
            return text(StatusCode::OK, "ready\n".into());
        };
        match tokio::time::timeout(PING_LIMIT, redis.ping()).await {
            Ok(Ok(())) => text(StatusCode::OK, "ready\n".into()),
            // Still serving: every request is answered, coalesced within
            // this instance only.
            _ => text(
                StatusCode::OK,
                "degraded: Redis does not answer; coalescing within this instance only\n".into(),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    res
}

/// Serves the admin endpoints on `listener` (HTTP/1.1) until `shutdown`
/// completes.
pub async fn serve_admin<F>(listener: TcpListener, admin: Admin, shutdown: F)
where
    F: Future<Output = ()>,
{
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let admin = admin.clone();
        let service = hyper::service::service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin.answer(req).await) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Installs the process's Prometheus recorder, with histogram buckets for
/// every `_seconds` metric, and keeps its histograms drained; the handle
/// renders `/metrics`. Install it before the layer is built, so that the
/// layer's metrics are registered with it.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    const BUCKETS: [f64; 15] = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// `coalesce-proxy healthcheck [ADDR]`: asks the admin listener at `addr`
/// for `/healthz`, for container health checks in an image that has no
/// HTTP client. `Ok` if it answered `200` within 3 s; else why not.
pub async fn healthcheck(addr: std::net::SocketAddr) -> Result<(), String> {
    let ask = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let req = Request::get("/healthz")
            .header(header::HOST, addr.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let res = send.send_request(req).await.map_err(|e| e.to_string())?;
        match res.status() {
            StatusCode::OK => Ok(()),
            status => Err(format!("{addr} answered {status}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(3), ask)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {addr} within 3 s")))
}

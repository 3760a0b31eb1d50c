//! The listener: accepting connections within the limit, TLS handshakes,
//! HTTP/1.1 and HTTP/2 on each, and the graceful drain at shutdown.

use crate::access::{Logged, Pending};
use crate::conn::{drive, Activity, ConnectionOptions};
use crate::forward::{upgrade_of, ConnectionPlace};
use crate::meter::ResponseMeter;
use crate::routes::Routes;
use crate::Tls;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Accepts connections on `listener` and serves each with `proxy` — HTTP/1.1,
/// and HTTP/2 with prior knowledge (h2c) — until `shutdown` completes; then
/// stops accepting, asks every open connection to close once its requests
/// in flight are answered (idle keep-alive connections close at once; an
/// HTTP/2 connection gets `GOAWAY`), and returns when all are closed.
pub async fn serve<F>(listener: TcpListener, proxy: impl Into<Routes>, shutdown: F)
where
    F: Future<Output = ()>,
{
    serve_with(listener, proxy, ListenOptions::default(), shutdown).await;
}

/// How the listener takes connections.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// TLS on every connection (HTTP/2 then by ALPN); a handshake that does
    /// not complete within 10 s is dropped.
    pub tls: Option<Tls>,
    /// The most connections open at once: past it, new ones wait in the
    /// listen backlog until one closes.
    pub max_connections: usize,
    /// Log a line per request (under [`ACCESS_TARGET`](crate::ACCESS_TARGET)):
    /// `Some(true)` with the query, `Some(false)` without.
    pub access_log: Option<bool>,
    /// How each connection is served: timeouts and HTTP/2 limits.
    pub connections: ConnectionOptions,
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self {
            tls: None,
            max_connections: 10_000,
            access_log: None,
            connections: ConnectionOptions::default(),
        }
    }
}

/// As [`serve`], taking connections as `options` say.
pub async fn serve_with<F>(
    listener: TcpListener,
    proxy: impl Into<Routes>,
    options: ListenOptions,
    shutdown: F,
) where
    F: Future<Output = ()>,
{
    let proxy: Routes = proxy.into();
    let drain = CancellationToken::new();
    let tasks = TaskTracker::new();
    let server = options.connections.builder();
    let idle = options.connections.idle_timeout;
    let open = Arc::new(tokio::sync::Semaphore::new(options.max_connections));
    let tls = options.tls;
    let meter = Arc::new(ResponseMeter::new());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A connection is accepted only with a place for it.
        let place = tokio::select! {
            place = open.clone().acquire_owned() => place,
            () = &mut shutdown => break,
        };
        let Ok(place) = place else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, typically: retrying at once would
                // spin; the condition clears as connections close.
                eprintln!("coalesce-proxy: accept: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.for_client(addr);
        let access_log = options.access_log;
        let place = Arc::new(place);
        let held = place.clone();
        let meter = meter.clone();
        let activity = Arc::new(Activity::default());
        let requests = activity.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let start = Instant::now();
            let busy = requests.begin();
            if upgrade_of(&req).is_some() {
                req.extensions_mut().insert(ConnectionPlace(held.clone()));
            }
            let pending = access_log.map(|query| Pending::of(&mut req, query));
            let answered = proxy.answer(req);
            let meter = meter.clone();
            async move {
                let res = answered.await?;
                meter.answered(&res, start.elapsed());
                Ok::<_, Infallible>(match pending {
                    Some(pending) => pending.answered(res, busy),
                    None => res.map(|body| Logged::unlogged(body, busy)),
                })
            }
        });
        let (server, drain) = (server.clone(), drain.clone());
        let tls = tls.clone();
        // The handshake runs in the connection's task: a slow client holds
        // up no one else's accept.
        let task = async move {
            let _place = place;
            let served = match tls {
                None => {
                    let connection =
                        server.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let close = auto::UpgradeableConnection::graceful_shutdown;
                    drive(connection, close, &drain, &activity, idle).await
                }
                Some(tls) => {
                    let handshake = tls.acceptor().accept(stream);
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%addr, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%addr, "TLS handshake timed out");
                            return;
                        }
                    };
                    let connection =
                        server.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    // Boxed: a TLS connection's state is larger than a plain
                    // one's, and every connection's task would otherwise
                    // be as large (5.0 KiB against 3.8 KiB).
                    let close = auto::UpgradeableConnection::graceful_shutdown;
                    Box::pin(drive(connection, close, &drain, &activity, idle)).await
                }
            };
            if let Err(error) = served {
                // A client that left mid-request, or kept a connection idle
                // past the header read timeout: nothing to tell.
                let expected = error
                    .downcast_ref::<hyper::Error>()
                    .is_some_and(|e| e.is_incomplete_message() || e.is_timeout());
                if expected {
                    tracing::debug!(%addr, %error, "connection closed");
                } else {
                    eprintln!("coalesce-proxy: connection from {addr}: {error}");
                }
            }
        };
        tasks.spawn(task);
    }
    drop(listener);
    drain.cancel();
    tasks.close();
    tasks.wait().await;
}

/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

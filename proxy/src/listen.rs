//! The listener: accepting connections within the limit, TLS handshakes,
//! HTTP/1.1 and HTTP/2 on each, and the graceful drain at shutdown.

use crate::access::{Logged, Pending};
use crate::forward::{upgrade_of, ConnectionPlace};
use crate::meter::ResponseMeter;
use crate::routes::Routes;
use crate::Tls;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

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
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self {
            tls: None,
            max_connections: 10_000,
            access_log: None,
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
    let graceful = GracefulShutdown::new();
    let server = connection_builder();
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
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let start = Instant::now();
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
                    Some(pending) => pending.answered(res),
                    None => res.map(Logged::unlogged),
                })
            }
        });
        let (server, watcher) = (server.clone(), graceful.watcher());
        let tls = tls.clone();
        // The handshake runs in the connection's task: a slow client holds
        // up no one else's accept.
        let task = async move {
            let _place = place;
            let served = match tls {
                None => {
                    let connection =
                        server.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
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
                    Box::pin(watcher.watch(connection.into_owned())).await
                }
            };
            if let Err(error) = served {
                let incomplete = error
                    .downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_incomplete_message);
                if !incomplete {
                    eprintln!("coalesce-proxy: connection from {addr}: {error}");
                }
            }
        };
        tokio::spawn(task);
    }
    drop(listener);
    graceful.shutdown().await;
}

/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How each client connection is served: HTTP/1.1 with hyper's header read
/// timeout (30 s; it also ends an idle keep-alive connection), or HTTP/2,
/// told apart by the connection preface. HTTP/2 connections are pinged
/// every 20 s and closed when a ping goes unanswered for 20 s (a client
/// that went away without a word); hyper limits each to 200 concurrent
/// streams and guards against reset floods.
fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(200)
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

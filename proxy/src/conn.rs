//! One client connection's life once it is accepted: how it is served
//! (the HTTP/1.1 and HTTP/2 settings), and when it is asked to close —
//! when the proxy drains, or when it has had no request in progress for
//! the idle timeout. Either way the close is graceful: an idle HTTP/1.1
//! connection closes at once, a busy one after its response; HTTP/2 gets
//! `GOAWAY` and its open streams finish.

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How each client connection is served.
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// HTTP/1.1: how long a client has to send a request's head, counted
    /// from when the connection is ready for one (its start, or the end of
    /// the previous response); past it the connection closes. So it also
    /// ends an idle keep-alive connection.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed
    /// gracefully (HTTP/2 gets `GOAWAY`): looked at once per timeout, so
    /// after one to two of them. HTTP/2 has no header timer, so this is
    /// what ends an idle HTTP/2 connection.
    pub idle_timeout: Duration,
    /// HTTP/2: the most streams one connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: how often an idle-looking connection is pinged, and how
    /// long a ping may go unanswered before the connection is closed (a
    /// client that went away without a word).
    pub h2_keep_alive: (Duration, Duration),
    /// HTTP/2: streams a client may open and reset before the proxy has
    /// accepted them, at most (the "rapid reset" flood, CVE-2023-44487);
    /// past it the connection is closed.
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2: streams the proxy may reset for the client's protocol
    /// errors on one connection, at most, before closing it
    /// (CVE-2019-9514 and its kin).
    pub h2_max_local_error_reset_streams: usize,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            h2_max_concurrent_streams: 200,
            h2_keep_alive: (Duration::from_secs(20), Duration::from_secs(20)),
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 1024,
        }
    }
}

impl ConnectionOptions {
    /// The server every connection is served by: HTTP/1.1 or HTTP/2, told
    /// apart by the connection preface (or by ALPN under TLS).
    pub(crate) fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        let (interval, timeout) = self.h2_keep_alive;
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.h2_max_concurrent_streams)
            .keep_alive_interval(interval)
            .keep_alive_timeout(timeout)
            .max_pending_accept_reset_streams(self.h2_max_pending_accept_reset_streams)
            .max_local_error_reset_streams(self.h2_max_local_error_reset_streams);
        builder
    }
}

/// How many requests of one connection are in progress (from the call of
/// the service to the end of the response's body), and how many have
/// begun: two atomic adds a request, no timer.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    in_progress: AtomicUsize,
    begun: AtomicU64,
}

/// One request in progress, until dropped (with its response's body).
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Activity {
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.in_progress.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Completes once a whole `timeout` has passed with no request in
    /// progress and none begun: looked at once per `timeout`, so an idle
    /// connection is found idle after one to two timeouts.
    async fn idle_for(&self, timeout: Duration) {
        // Idle for a whole period: idle at its start and at its end, and
        // nothing begun in between.
        let mut seen = self.begun.load(Ordering::Relaxed);
        let mut idle = self.in_progress.load(Ordering::Acquire) == 0;
        loop {
            tokio::time::sleep(timeout).await;
            let begun = self.begun.load(Ordering::Relaxed);
            let idle_now = self.in_progress.load(Ordering::Acquire) == 0;
            if idle && idle_now && begun == seen {
                return;
            }
            (seen, idle) = (begun, idle_now);
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `connection` to its end, asking it to close (`close`: its
/// graceful shutdown) once `drain` is cancelled or once it has been idle
/// for `idle`.
pub(crate) async fn drive<C: Future>(
    connection: C,
    close: impl Fn(Pin<&mut C>),
    drain: &CancellationToken,
    activity: &Activity,
    idle: Duration,
) -> C::Output {
    let mut connection = std::pin::pin!(connection);
    let idle = activity.idle_for(idle);
    let mut idle = std::pin::pin!(idle);
    let mut asked = false;
    loop {
        tokio::select! {
            biased;
            out = connection.as_mut() => return out,
            () = drain.cancelled(), if !asked => {
                asked = true;
                close(connection.as_mut());
            }
            () = &mut idle, if !asked => {
                asked = true;
                close(connection.as_mut());
            }
        }
    }
}

//! Requests that ask to switch protocols (a WebSocket handshake): sent to
//! the upstream over HTTP/1.1 past the coalescing layer, and on `101` the
//! client's connection joined to the upstream's, byte for byte.

use super::{bad_request, strip_hop_by_hop, Forward, Kind, UpstreamBody};
use crate::meter::Ended;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

impl Forward {
    /// Sends a request that asks for a protocol upgrade (a WebSocket
    /// handshake, say; see [`upgrade_of`]) to the upstream over HTTP/1.1,
    /// and, if the upstream switches protocols, joins the client's
    /// connection to the upstream's, byte for byte in both directions,
    /// until either side closes. Any other answer goes back as it came.
    /// The request is its client's own: no layer sees it.
    pub(crate) fn tunnel(
        &self,
        mut req: Request<Incoming>,
    ) -> impl Future<Output = Response<UpstreamBody>> + Send + 'static {
        let protocol = upgrade_of(&req);
        let client_side = hyper::upgrade::on(&mut req);
        // The connection keeps its place under `--max-connections` while
        // the tunnel lasts.
        let place = req.extensions_mut().remove::<ConnectionPlace>();
        let prepared = self.prepare(&mut req).map(|()| {
            let headers = req.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(protocol) = protocol {
                headers.insert(header::UPGRADE, protocol);
            }
            let limit = usize::try_from(self.to.max_request_body).unwrap_or(usize::MAX);
            let target = req.uri().clone();
            (
                target,
                self.to
                    .tunnels
                    .request(req.map(|body| Limited::new(body, limit))),
            )
        });
        let to = self.to.clone();
        async move {
            let (target, response) = match prepared {
                Ok(prepared) => prepared,
                Err(message) => return bad_request(message).map(Either::Right),
            };
            let start = Instant::now();
            let answered = tokio::time::timeout(to.timeout, response).await;
            let took = start.elapsed();
            let mut res = match answered {
                Ok(Ok(res)) => {
                    to.meter
                        .ended(Kind::Direct, Ended::Answered(res.status()), took);
                    res
                }
                Ok(Err(error)) => return to.unanswered(Kind::Direct, &target, Some(&error), took),
                Err(_) => return to.unanswered(Kind::Direct, &target, None, took),
            };
            if res.status() != StatusCode::SWITCHING_PROTOCOLS {
                let (mut head, body) = res.into_parts();
                strip_hop_by_hop(&mut head.headers);
                return Response::from_parts(head, Either::Left(body));
            }
            let upstream_side = hyper::upgrade::on(&mut res);
            let (mut head, _) = res.into_parts();
            let switched_to = head.headers.get(header::UPGRADE).cloned();
            strip_hop_by_hop(&mut head.headers);
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(protocol) = switched_to {
                head.headers.insert(header::UPGRADE, protocol);
            }
            // Both upgrades complete once the `101` has gone to the client.
            tokio::spawn(async move {
                let _place = place;
                let (upstream, client) = match tokio::join!(upstream_side, client_side) {
                    (Ok(upstream), Ok(client)) => (upstream, client),
                    (Err(error), _) | (_, Err(error)) => {
                        tracing::debug!(%target, %error, "a protocol upgrade did not complete");
                        return;
                    }
                };
                let (mut upstream, mut client) = (TokioIo::new(upstream), TokioIo::new(client));
                if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                {
                    tracing::debug!(%target, %error, "an upgraded connection ended");
                }
            });
            Response::from_parts(head, Either::Right(Full::default()))
        }
    }
}

/// The protocol an HTTP/1.1 request asks to switch to: its `Upgrade`, when
/// `Connection` names `upgrade` (RFC 9110 §7.8). HTTP/2 has no such
/// upgrade (its extended `CONNECT`, RFC 8441, is not proxied).
pub(crate) fn upgrade_of<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asked = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asked.then(|| req.headers().get(header::UPGRADE).cloned())?
}

/// A client connection's place under `--max-connections`, in the request
/// extensions of a protocol upgrade: the tunnel holds it as long as it
/// lasts, after the connection's own task has ended.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionPlace(
    #[allow(dead_code)] pub(crate) Arc<tokio::sync::OwnedSemaphorePermit>,
);

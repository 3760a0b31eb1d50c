//! The path of a keyed request that missed the in-memory cache: lead a flight
//! or follow one, and what a follower does with each way a flight can land.
//!
//! A follower never touches the backend: it waits for the flight's landing,
//! woken by it, never polling. A flight that was abandoned sends it back to the
//! table, where it leads or follows again.

use crate::flight::{self, Landing, Role};
use crate::future::mark;
use crate::layer::Shared;
use crate::leader::{self, error_response, Origin, OriginBody};
use crate::stats::bump;
use crate::{CoalesceBody, FlightError, FlightErrorKind, Key, Outcome, WaitFallback};
use http::{Request, Response};
use std::sync::Arc;
use tower::ServiceExt;
use tower_service::Service;

pub(crate) async fn coalesced<S, E, ReqBody, ResBody>(
    shared: Arc<Shared<E>>,
    key: Key,
    mut role: Role,
    req: Request<ReqBody>,
    inner: S,
) -> Result<Response<CoalesceBody<ResBody>>, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    E: Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let header = shared.config.outcome_header.clone();
    let header = header.as_ref();
    loop {
        let mut receiver = match role {
            Role::Leader(guard) => {
                let own = leader::spawn(shared.clone(), guard, key, req, inner);
                return leader::own_answer(own, header).await;
            }
            Role::Follower(receiver) => receiver,
        };
        bump(&shared.counters.followers);
        let wait = tokio::time::timeout(shared.config.wait_timeout, flight::wait(&mut receiver));
        let landing = match wait.await {
            Ok(landing) => landing,
            Err(_) => {
                bump(&shared.counters.wait_timeouts);
                tracing::debug!(?key, "wait timeout; {:?}", shared.config.wait_fallback);
                return match shared.config.wait_fallback {
                    WaitFallback::CallOrigin => pass(&shared, req, inner, header).await,
                    WaitFallback::GatewayTimeout => {
                        let error = FlightError::new(
                            FlightErrorKind::WaitTimeout,
                            format!("no answer within {:?}", shared.config.wait_timeout),
                        );
                        Ok(mark(error_response(error), Outcome::Follower, header))
                    }
                };
            }
        };
        match landing {
            Some(Landing::Done(entry)) => {
                return Ok(mark(entry.to_response(), Outcome::Follower, header))
            }
            Some(Landing::Failed(error)) => {
                return Ok(mark(error_response(error), Outcome::Follower, header))
            }
            Some(Landing::Uncacheable) => return pass(&shared, req, inner, header).await,
            None => {
                bump(&shared.counters.dangling);
                drop(receiver);
                if let Some(entry) = leader::local_hit(&shared, &key) {
                    return Ok(mark(entry.to_response(), Outcome::Hit, header));
                }
                role = shared.table.join(&key);
            }
        }
    }
}

/// Calls the inner service for this request alone.
async fn pass<S, E, ReqBody, ResBody>(
    shared: &Shared<E>,
    req: Request<ReqBody>,
    inner: S,
    header: Option<&http::HeaderName>,
) -> Result<Response<CoalesceBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    bump(&shared.counters.origin_calls);
    let res = inner.oneshot(req).await?;
    Ok(mark(res.map(CoalesceBody::inner), Outcome::Pass, header))
}

//! Calls the layer makes for one caller alone — bypassed requests (no key,
//! credentials, unsafe methods) and pass-through ones — bounded by
//! [`direct_timeout`](crate::CoalesceConfig::direct_timeout): an inner
//! service that never answers must not hold its caller forever. (Flights
//! have their own bound, `wait_timeout`.)

use crate::shared::Shared;
use crate::stats::bump;
use crate::{CoalesceBody, FlightError, FlightErrorKind};
use http::Response;
use std::future::Future;
use std::time::Duration;

/// The answer to a direct call that got none within `limit`: `504` (for
/// gRPC, `DEADLINE_EXCEEDED`), counted.
pub(crate) fn timed_out<E, B>(
    shared: &Shared<E>,
    limit: Duration,
    grpc: bool,
) -> Response<CoalesceBody<B>> {
    bump(&shared.counters.origin_timeouts);
    tracing::debug!(
        ?limit,
        "a direct call got no answer within the direct timeout"
    );
    FlightError::new(
        FlightErrorKind::OriginTimeout,
        format!("no answer within {limit:?}"),
    )
    .into_response(grpc)
}

/// `call`'s answer, or [`timed_out`]'s once the configured bound passes.
pub(crate) async fn bounded<E, F, B, Err>(
    shared: &Shared<E>,
    call: F,
    grpc: bool,
) -> Result<Response<CoalesceBody<B>>, Err>
where
    F: Future<Output = Result<Response<B>, Err>>,
{
    let Some(limit) = shared.config.direct_timeout else {
        return call.await.map(|res| res.map(CoalesceBody::inner));
    };
    match tokio::time::timeout(limit, call).await {
        Ok(answer) => answer.map(|res| res.map(CoalesceBody::inner)),
        Err(_) => Ok(timed_out(shared, limit, grpc)),
    }
}

//! A flight whose answer streams to its callers while its body arrives.

use super::end::{end, fence, Tail};
use crate::flight::Landing;
use crate::origin::{OriginBody, Pump};
use crate::shared::Shared;
use crate::Key;

/// A flight whose answer's body is arriving, with what it holds until the
/// body ends: the pump that reads it, and the lease to end.
pub(crate) struct Streaming<B> {
    pub(super) source: Source<B>,
    pub(super) tail: Tail,
    /// The key it leases and stores under.
    pub(super) key: Key,
}

/// Where a streaming answer's body comes from.
pub(super) enum Source<B> {
    /// The origin, read by this flight.
    Origin(Pump<B>),
    /// Another instance's flight, through the backend.
    Remote(crate::remote_stream::Follow),
}

impl<B: OriginBody> Streaming<B> {
    /// The landing that gives the followers the answer as it arrives.
    pub(crate) fn landing(&self) -> Landing {
        let streamed = match &self.source {
            Source::Origin(pump) => &pump.streamed,
            Source::Remote(follow) => follow.streamed(),
        };
        Landing::Streaming(streamed.clone())
    }

    /// Reads the body to its end (renewing the lease, and publishing the
    /// body to the other instances, meanwhile), stores the answer if it may
    /// be kept, and ends the lease; returns how the flight ended. `close`
    /// takes the flight out of the table (see [`Pump::run`]).
    pub(crate) async fn finish<E>(self, shared: &Shared<E>, close: impl Fn()) -> Landing {
        let Streaming { source, tail, key } = self;
        let key = &key;
        let pump = match source {
            Source::Origin(pump) => pump,
            // The other instance stores it and ends its lease.
            Source::Remote(follow) => return follow.run(shared, key, close).await,
        };
        // Waiters in other instances exist only behind a lease; an answer
        // made for another variant than the one leased is not handed to
        // them.
        let variant = match &pump.streamed.varied {
            Some(varied) => varied.key(&key.primary()) == *key,
            None => key.variants().is_none(),
        };
        let publisher = tail
            .lease
            .clone()
            .filter(|_| variant)
            .map(|token| crate::remote_stream::Publisher::new(key.clone(), token));
        let pumped = pump.run(shared, close, publisher);
        let ((landing, mut keep), lost) = match &tail.lease {
            Some(lease) => crate::remote::with_watchdog(shared, key, lease, pumped).await,
            None => (pumped.await, false),
        };
        fence(shared, key, &mut keep);
        end(shared, key, tail, keep, &landing, lost).await;
        landing
    }
}

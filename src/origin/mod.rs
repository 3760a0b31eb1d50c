//! The origin call of a flight: call the inner service, judge the response,
//! read its body — whole, or into the tape every caller of the flight reads
//! as it arrives — and say what each party gets: the followers' landing,
//! the leader caller's own answer, the entry to keep.
//!
//! It never stores or publishes anything: the flight task does that with
//! what this returns. What is kept and for how long is `keep`; reading the
//! body as far as it has arrived, `buffer`; the rest of a streamed body,
//! `pump`.

mod buffer;
mod keep;
mod pump;

use crate::conditions::Asked;
use crate::entry::Life;
use crate::flight::{Landing, Streamed};
use crate::policy::{self, Sharing};
use crate::shared::Shared;
use crate::stats::bump;
use crate::tape::{EndsTape, Tape};
use crate::{BoxError, CoalesceBody, Entry, FlightError, FlightErrorKind, KeyExtractor, Outcome};
use buffer::{buffer, Buffered};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use keep::decide;
pub(crate) use keep::Keep;
pub(crate) use pump::Pump;
use std::fmt::Display;
use std::sync::Arc;
use std::time::SystemTime;
use tower::ServiceExt;
use tower_service::Service;

/// The inner services the flight machinery can drive: what a flight's task
/// needs of the service, its future and its bodies, said once. Cloned (as
/// tower's services are) where a flight keeps one to call later, so that
/// it holds no readied service meanwhile.
pub(crate) trait Origin<ReqBody, ResBody>:
    Service<
        Request<ReqBody>,
        Response = Response<ResBody>,
        Future: Send + 'static,
        Error: Display + Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, ReqBody, ResBody> Origin<ReqBody, ResBody> for S
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Display + Send + 'static,
{
}

/// The response bodies a flight can buffer, replay and hand across tasks.
pub(crate) trait OriginBody:
    Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> OriginBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

/// What the leader's own caller receives: its response (with how it was
/// made), or the inner service's own error.
pub(crate) type Own<B, E> = Result<(Response<CoalesceBody<B>>, Outcome), E>;

/// What the origin call made: a whole answer, or one whose body streams.
pub(crate) enum Made<B, E> {
    /// The answer is whole (or failed, or may not be shared).
    Whole(Produced<B, E>),
    /// The head is here and may be shared; the body is still arriving: the
    /// pump reads it into the tape every caller reads, the leader's caller
    /// with this answer.
    Streaming(Pump<B>, Own<B, E>),
}

/// What the origin call produced: the landing for the followers, the leader
/// caller's own answer, and the entry to keep, if it may be stored.
pub(crate) struct Produced<B, E> {
    pub(crate) landing: Landing,
    pub(crate) own: Own<B, E>,
    pub(crate) keep: Option<Keep>,
}

/// Calls the origin, judges the response, and reads its body: all of it
/// when a stale answer may stand in for a failure (`stand_in`), or what
/// came with the head, the rest to stream.
pub(crate) async fn produce<S, E, ReqBody, ResBody>(
    shared: &Shared<E>,
    asked: &Asked,
    mut req: Request<ReqBody>,
    inner: S,
    (refreshing, stand_in): (Option<&Entry>, bool),
    filled: crate::PurgePosition,
) -> Made<ResBody, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ResBody: OriginBody,
{
    let counters = &shared.counters;
    bump(&counters.origin_calls);
    // Kept for a response that varies on headers outside the key: followers
    // then share it only if their values are the leader's. Header values are
    // reference-counted, so this costs one small map per flight.
    let sent = req.headers().clone();
    // For a tags function: the request's head, as sent.
    let request_head = shared.config.tags.as_ref().map(|_| {
        let mut head = Request::new(());
        *head.method_mut() = req.method().clone();
        *head.uri_mut() = req.uri().clone();
        *head.headers_mut() = sent.clone();
        head.into_parts().0
    });
    // A refresh asks whether the stale answer changed, if it can tell.
    let revalidating =
        refreshing.filter(|stale| crate::revalidate::ask_if_changed(&mut req, stale));
    // A body the head's `Content-Length` does not describe.
    let head_only = req.method() == http::Method::HEAD;
    let requested = SystemTime::now();
    let started = crate::stats::Started::now();
    let answered = inner.oneshot(req).await;
    shared.meter.origin(started);
    let res = match answered {
        Ok(res) => res,
        Err(error) => {
            bump(&counters.errors);
            let shared_error = FlightError::new(FlightErrorKind::Origin, error.to_string());
            return Made::Whole(Produced {
                landing: Landing::Failed(shared_error),
                own: Err(error),
                keep: None,
            });
        }
    };
    let received = SystemTime::now();
    let (mut head, body) = res.into_parts();
    let tags = crate::purge::tags_of(&shared.config, request_head.as_ref(), &mut head);
    if let (StatusCode::NOT_MODIFIED, Some(stale)) = (head.status, revalidating) {
        // Tags the 304 names replace the stale answer's.
        let tags = if tags.is_empty() {
            stale.tags().to_vec()
        } else {
            tags
        };
        let fill = (filled, tags);
        return Made::Whole(renew(
            shared,
            asked,
            stale,
            &head,
            (requested, received),
            fill,
        ));
    }
    let (sharing, life, age) = decide(&shared.config, &head, requested, received).unwrap_or((
        Sharing::Pass,
        Life::NONE,
        None,
    ));
    tracing::debug!(status = %head.status, ?sharing, "origin answered");
    // An answer that varies on request headers outside the key is for the
    // callers that send the leader's values of them: it is stored under
    // the key of that variant (RFC 9111 §4.1).
    let varied = crate::vary::of_answer(&head.headers, |name| shared.extractor.keys_header(name))
        .map(|variants| Arc::new(crate::flight::Varied::of(variants, &sent)));
    if sharing == Sharing::Pass {
        bump(&counters.passed_flights);
        let own = asked.answer_streamed(head, CoalesceBody::inner(body));
        return Made::Whole(Produced {
            landing: Landing::Pass,
            own: Ok((own, Outcome::Leader)),
            keep: None,
        });
    }

    // With an answer that may stand in for an error, no head goes out before
    // the body is known to be whole: the body is buffered, up to the stored
    // size (past it, the stand-in is given up). Otherwise what has arrived
    // with the head is taken, and the rest streams to every caller.
    let limit = shared.config.max_stored_bytes;
    match buffer(body, limit, stand_in).await {
        Buffered::Whole { data, trailers } => {
            let sharing = policy::judge_trailers(sharing, trailers.as_ref());
            let entry = Entry::new(head.status, head.version, head.headers, data, trailers)
                .filled(filled, tags);
            let own = asked.answer(&entry);
            let keep = Keep::of(&entry, sharing, life, age);
            let landing = match varied {
                None => Landing::Done(entry),
                Some(varied) => Landing::Varied(entry, varied),
            };
            Made::Whole(Produced {
                keep,
                landing,
                own: Ok((own, Outcome::Leader)),
            })
        }
        Buffered::Unfinished { prefix, rest } => {
            let bodiless = head_only
                || head.status == StatusCode::NO_CONTENT
                || head.status == StatusCode::NOT_MODIFIED;
            // The head's length, or the body's own if it knows it exactly
            // (the head then goes out with it too).
            let read: u64 = prefix.iter().map(|c| c.len() as u64).sum();
            let declared = crate::conditions::content_length(&head.headers)
                .or_else(|| Some(rest.size_hint().exact()? + read))
                .filter(|_| !bodiless);
            let tape = Tape::new(declared);
            prefix.into_iter().for_each(|chunk| tape.push(chunk));
            let head = Entry::new(head.status, head.version, head.headers, Bytes::new(), None)
                .filled(filled, tags);
            let streamed = Arc::new(Streamed {
                head,
                tape,
                varied,
                whole: std::sync::OnceLock::new(),
            });
            let own = asked
                .answer_tape(&streamed)
                .expect("a new tape starts at its first byte");
            Made::Streaming(
                Pump {
                    ends: EndsTape::new(&streamed.tape),
                    streamed,
                    rest,
                    sharing,
                    life,
                    age,
                },
                Ok((own, Outcome::Leader)),
            )
        }
        Buffered::Failed { prefix, error } => {
            bump(&counters.errors);
            let shared_error = FlightError::new(FlightErrorKind::Body, error.to_string());
            let own = Response::from_parts(head, CoalesceBody::replay(prefix, None, Some(error)));
            Made::Whole(Produced {
                landing: Landing::Failed(shared_error),
                own: Ok((own, Outcome::Leader)),
                keep: None,
            })
        }
    }
}

/// A `304` answered a refresh's validators: the stale answer, renewed, is
/// the flight's answer and is stored like a new one.
fn renew<E, B, Err>(
    shared: &Shared<E>,
    asked: &Asked,
    stale: &Entry,
    not_modified: &http::response::Parts,
    (requested, received): (SystemTime, SystemTime),
    (filled, tags): (crate::PurgePosition, Vec<crate::purge::Digest16>),
) -> Produced<B, Err> {
    let renewed = crate::revalidate::renewed(stale, not_modified).and_then(|(entry, head)| {
        let entry = entry.filled(filled, tags);
        let (sharing, life, age) = decide(&shared.config, &head, requested, received)?;
        Some((entry, sharing, life, age))
    });
    let Some((entry, sharing, life, age)) = renewed else {
        // Another representation, or headers that cannot be read: no
        // answer; the stale one stays until the next refresh.
        tracing::debug!("a 304 that renews nothing; the refresh failed");
        let error = FlightError::new(FlightErrorKind::Origin, "a 304 for another representation");
        // The leader's caller, if any, gets the error its followers get:
        // it asked for the answer, not for the origin's 304.
        let own = error.clone().into_response(false);
        return Produced {
            landing: Landing::Failed(error),
            own: Ok((own, Outcome::Leader)),
            keep: None,
        };
    };
    bump(&shared.counters.revalidations);
    let keep = Keep::of(&entry, sharing, life, age);
    let landing = match sharing {
        Sharing::Pass => Landing::Pass,
        _ => Landing::Done(entry.clone()),
    };
    Produced {
        own: Ok((asked.answer(&entry), Outcome::Leader)),
        landing,
        keep,
    }
}

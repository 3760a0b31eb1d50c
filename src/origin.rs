//! The origin call of a flight: call the inner service, judge the response,
//! read its body — whole, or into the tape every caller of the flight reads
//! as it arrives — and say what each party gets: the followers' landing,
//! the leader caller's own answer, the entry to keep.
//!
//! It never stores or publishes anything: the flight task does that with
//! what this returns.

use crate::backend::StreamEnd;
use crate::conditions::Asked;
use crate::entry::Life;
use crate::flight::{Landing, Streamed};
use crate::freshness::Freshness;
use crate::policy::{self, Sharing};
use crate::remote_stream::Publisher;
use crate::shared::Shared;
use crate::stats::bump;
use crate::tape::{EndsTape, Tape};
use crate::{BoxError, CoalesceBody, Entry, FlightError, FlightErrorKind, KeyExtractor, Outcome};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use std::fmt::Display;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tower::ServiceExt;
use tower_service::Service;

/// The inner services the flight machinery can drive: what a flight's task
/// needs of the service, its future and its bodies, said once.
pub(crate) trait Origin<ReqBody, ResBody>:
    Service<
        Request<ReqBody>,
        Response = Response<ResBody>,
        Future: Send + 'static,
        Error: Display + Send + 'static,
    > + Send
    + 'static
{
}

impl<S, ReqBody, ResBody> Origin<ReqBody, ResBody> for S
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
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

/// An answer to store: marked as stored, and for how long it stays fresh.
#[derive(Clone)]
pub(crate) struct Keep {
    pub(crate) entry: Entry,
    pub(crate) ttl: std::time::Duration,
}

impl Keep {
    /// `entry` to store, if `sharing` allows and it has freshness; marked
    /// as stored now, so that answers later made from it carry their `Age`.
    fn of(
        entry: &Entry,
        sharing: Sharing,
        life: Life,
        age: Option<std::time::Duration>,
    ) -> Option<Self> {
        (sharing == Sharing::Store && life.stores()).then(|| Keep {
            entry: entry.clone().kept(SystemTime::now(), age, life),
            ttl: life.kept(),
        })
    }
}

/// Whether the answer with this head may be shared and stored, for how
/// long, and its age on arrival: decided by its `Cache-Control` and
/// `Expires` — or by the first targeted field the configuration names that
/// it carries (RFC 9213), which then stands for both. `None` if the
/// deciding field cannot be read.
fn decide(
    config: &crate::CoalesceConfig,
    head: &http::response::Parts,
    requested: SystemTime,
    received: SystemTime,
) -> Option<(Sharing, Life, Option<Duration>)> {
    let targeted = crate::targeted::cache_control(&head.headers, &config.targeted);
    let control = targeted.as_ref().unwrap_or(&head.headers);
    let expires = targeted.is_none();
    let directives = policy::directives(control).ok()?;
    let sharing = policy::judge(head, &directives, (config.store_server_errors, expires));
    let (life, age) = keep_for(config, head, (&directives, expires), requested, received);
    Some((sharing, life, age))
}

/// How long the answer with this head is fresh (zero: not stored at all)
/// and may then be served stale, and its age on arrival if the origin's
/// freshness decides.
fn keep_for(
    config: &crate::CoalesceConfig,
    head: &http::response::Parts,
    (directives, expires): (&[policy::Directive<'_>], bool),
    requested: SystemTime,
    received: SystemTime,
) -> (Life, Option<std::time::Duration>) {
    let took = received.duration_since(requested).unwrap_or_default();
    // Answers with validators are kept past their windows, to revalidate.
    let validators =
        head.headers.contains_key(header::ETAG) || head.headers.contains_key(header::LAST_MODIFIED);
    let retain = if validators {
        config.revalidation_retention
    } else {
        Duration::ZERO
    };
    // `no-cache` (with field names or without: both are read as
    // unqualified): stored only to be revalidated at every use.
    if directives.iter().any(|d| d.is("no-cache")) {
        let life = Life {
            retain,
            took,
            ..Life::NONE
        };
        let age = match &config.freshness {
            Freshness::Fixed(_) => None,
            Freshness::Origin(settings) => Some(
                crate::freshness::remaining(
                    settings,
                    head,
                    (directives, expires),
                    requested,
                    received,
                )
                .1,
            ),
        };
        return (life, age);
    }
    match &config.freshness {
        Freshness::Fixed(ttl) => {
            let windows = if crate::freshness::forbids_stale(directives) {
                (Duration::ZERO, Duration::ZERO)
            } else {
                (config.stale_while_revalidate, config.stale_if_error)
            };
            let life = Life {
                fresh: *ttl,
                stale: windows.0,
                if_error: windows.1,
                took,
                retain: if ttl.is_zero() {
                    Duration::ZERO
                } else {
                    retain
                },
            };
            (life, None)
        }
        Freshness::Origin(settings) => {
            let (fresh, age) = crate::freshness::remaining(
                settings,
                head,
                (directives, expires),
                requested,
                received,
            );
            let life = Life {
                fresh,
                stale: crate::freshness::stale_window(settings, directives),
                if_error: crate::freshness::error_window(settings, directives),
                took,
                retain,
            };
            (life, Some(age))
        }
    }
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
    let res = match inner.oneshot(req).await {
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

/// The rest of a streamed answer's body, to be read into its tape.
pub(crate) struct Pump<B> {
    pub(crate) streamed: Arc<Streamed>,
    /// Fails the tape if the pump is dropped before it ends it.
    ends: EndsTape,
    rest: Pin<Box<B>>,
    sharing: Sharing,
    life: Life,
    age: Option<Duration>,
}

impl<B: OriginBody> Pump<B> {
    /// Reads the body to its end at the origin's pace, whoever reads the
    /// tape (a body that sends nothing for the wait timeout fails), and
    /// says how the flight ended: the whole answer (kept, if it
    /// may be stored and is within the stored size), the answer still
    /// streaming (too large to keep whole), or the failure every reader's
    /// body ended with. `close` takes the flight out of the table: called
    /// once the tape has dropped its first bytes, when callers that come
    /// later can no longer read it.
    pub(crate) async fn run<E>(
        self,
        shared: &Shared<E>,
        close: impl Fn(),
        mut publisher: Option<Publisher>,
    ) -> (Landing, Option<Keep>) {
        let Pump {
            streamed,
            ends: _ends,
            mut rest,
            sharing,
            life,
            age,
        } = self;
        let tape = &streamed.tape;
        let config = &shared.config;
        let limit = config.max_stored_bytes;
        let window = config.stream_window.max(limit);
        let mut closed = false;
        let mut trailers = None;
        // A body that stops arriving fails, rather than hold every caller.
        let idle = config.wait_timeout;
        let failure = loop {
            // The bytes published to other instances wait at most a moment.
            let due = publisher.as_ref().and_then(Publisher::due);
            // The body's error, as text: nothing of the body's own types is
            // held across the writes below.
            let next = tokio::select! {
                biased;
                next = tokio::time::timeout(idle, rest.frame()) => {
                    Some(next.map(|frame| frame.map(|f| f.map_err(|e| e.into().to_string()))))
                }
                () = sleep_until_some(due) => None,
            };
            let Some(next) = next else {
                if let Some(publisher) = &mut publisher {
                    publisher.flush(shared, &streamed).await;
                }
                continue;
            };
            let Ok(next) = next else {
                break Some(format!("no byte of the origin's body arrived for {idle:?}"));
            };
            let Some(frame) = next else {
                break None;
            };
            let frame = match frame {
                Ok(frame) => frame,
                Err(error) => break Some(error),
            };
            match frame.into_data() {
                Ok(chunk) => {
                    let due = publisher.as_mut().is_some_and(|p| p.add(&chunk));
                    tape.push(chunk);
                    if due {
                        if let Some(publisher) = &mut publisher {
                            publisher.flush(shared, &streamed).await;
                        }
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                }
            }
            let len = tape.len();
            if tape.declared().is_some_and(|declared| len > declared) {
                break Some(format!(
                    "the origin sent more than the {} bytes it declared",
                    tape.declared().unwrap_or(0)
                ));
            }
            if len > limit as u64 {
                if tape.trim(window) && !closed {
                    closed = true;
                    close();
                }
                // Too large to keep, and nobody left to read it (here, or
                // in another instance).
                if closed && tape.readers() == 0 && publisher.is_none() {
                    break Some("every caller of the flight went away".to_owned());
                }
            }
        };
        let failure = failure.or_else(|| {
            let (len, declared) = (tape.len(), tape.declared()?);
            (len != declared).then(|| {
                format!("the origin's body ended after {len} of the {declared} bytes it declared")
            })
        });
        if let Some(why) = failure {
            bump(&shared.counters.errors);
            tape.fail(&why);
            if let Some(publisher) = &mut publisher {
                publisher.end(shared, &streamed, StreamEnd::Failed).await;
            }
            return (
                Landing::Failed(FlightError::new(FlightErrorKind::Body, why)),
                None,
            );
        }
        tape.complete(trailers.clone());
        if let Some(publisher) = &mut publisher {
            let end = StreamEnd::Complete(trailers.clone());
            publisher.end(shared, &streamed, end).await;
        }
        if tape.len() > limit as u64 {
            return (Landing::Streaming(streamed), None);
        }
        let Some((data, trailers)) = tape.joined() else {
            return (Landing::Streaming(streamed), None);
        };
        let sharing = policy::judge_trailers(sharing, trailers.as_ref());
        let entry = streamed.head.with_body(data, trailers);
        let _ = streamed.whole.set(entry.clone());
        let keep = Keep::of(&entry, sharing, life, age);
        let landing = match &streamed.varied {
            None => Landing::Done(entry),
            Some(varied) => Landing::Varied(entry, varied.clone()),
        };
        (landing, keep)
    }
}

/// Sleeps until `at`, or forever if `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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

/// A response body read as far as the limit allows.
enum Buffered<B> {
    /// All of it, within the limit.
    Whole {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// What was read (more than the limit, or all that had arrived), and
    /// the unread rest.
    Unfinished {
        prefix: Vec<Bytes>,
        rest: Pin<Box<B>>,
    },
    /// The body failed after `prefix`.
    Failed { prefix: Vec<Bytes>, error: BoxError },
}

/// Reads `body` up to `limit` bytes: all of it, waiting for it (`wait`),
/// or only what has already arrived.
async fn buffer<B>(body: B, limit: usize, wait: bool) -> Buffered<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    // Boxed once per flight so the unread rest can be handed on after reading.
    let mut body = Box::pin(body);
    let mut prefix = Vec::new();
    if body.size_hint().lower() > limit as u64 {
        return Buffered::Unfinished { prefix, rest: body };
    }
    let mut len = 0usize;
    let mut trailers = None;
    loop {
        let next = if wait {
            body.frame().await
        } else {
            match body.frame().now_or_never() {
                Some(next) => next,
                None => return Buffered::Unfinished { prefix, rest: body },
            }
        };
        let Some(frame) = next else {
            break;
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                return Buffered::Failed {
                    prefix,
                    error: error.into(),
                }
            }
        };
        match frame.into_data() {
            Ok(chunk) => {
                len = len.saturating_add(chunk.len());
                if !chunk.is_empty() {
                    prefix.push(chunk);
                }
                if len > limit {
                    return Buffered::Unfinished { prefix, rest: body };
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    let data = match prefix.len() {
        0 => Bytes::new(),
        1 => prefix.pop().unwrap_or_default(),
        _ => {
            let mut joined = BytesMut::with_capacity(len);
            prefix.iter().for_each(|c| joined.extend_from_slice(c));
            joined.freeze()
        }
    };
    Buffered::Whole { data, trailers }
}

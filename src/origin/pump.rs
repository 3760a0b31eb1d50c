//! The rest of a streamed answer's body, read into its tape at the
//! origin's pace.

use super::{Keep, OriginBody};
use crate::backend::StreamEnd;
use crate::entry::Life;
use crate::flight::{Landing, Streamed};
use crate::policy::{self, Sharing};
use crate::remote_stream::Publisher;
use crate::shared::Shared;
use crate::stats::bump;
use crate::tape::EndsTape;
use crate::{FlightError, FlightErrorKind};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The rest of a streamed answer's body, to be read into its tape.
pub(crate) struct Pump<B> {
    pub(crate) streamed: Arc<Streamed>,
    /// Fails the tape if the pump is dropped before it ends it.
    pub(super) ends: EndsTape,
    pub(super) rest: Pin<Box<B>>,
    pub(super) sharing: Sharing,
    pub(super) life: Life,
    pub(super) age: Option<Duration>,
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
        // What came with the head is on the tape already: the stream the
        // other instances read starts with it (and is not written at all
        // without it).
        match (&mut publisher, tape.chunks_from_start()) {
            (Some(publisher), Some(held)) => {
                publisher.open_if_long(shared, &streamed).await;
                let mut due = false;
                for chunk in &held {
                    due |= publisher.add(chunk);
                }
                if due {
                    publisher.flush(shared, &streamed).await;
                }
            }
            (Some(_), None) => publisher = None,
            (None, _) => {}
        }
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
            // Out of the table before any caller can see the failure: a
            // request that comes after it starts a new flight, rather than
            // join this one while it ends (its stream's end and its lease's
            // release may take a while).
            if !closed {
                close();
            }
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

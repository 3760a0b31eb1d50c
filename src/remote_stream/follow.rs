//! A waiting process's side of a streamed answer: another process's
//! answer, read from the backend into a tape of this process's own.

use super::{window, READ_MAX, RETRY_FIRST, RETRY_MAX};
use crate::backend::{StreamEnd, StreamRead, Watch};
use crate::backend_call::{optional, Op};
use crate::flight::{Landing, Streamed};
use crate::shared::Shared;
use crate::tape::Tape;
use crate::{FlightError, FlightErrorKind, Key};
use std::sync::Arc;
use tokio::time::Instant;

/// A waiting process's side: another process's answer, read into a tape
/// this process's callers read.
pub(crate) struct Follow {
    streamed: Arc<Streamed>,
    token: String,
    watch: Watch,
    /// Bytes read into the tape so far.
    have: u64,
}

impl Follow {
    /// Follows the stream whose head `read` holds: the answer its callers
    /// read. `None` if the head is not one this process can stream.
    pub(crate) fn new(watch: Watch, read: StreamRead) -> Option<Self> {
        let head = read.head?;
        let bodiless = matches!(
            head.status(),
            http::StatusCode::NO_CONTENT | http::StatusCode::NOT_MODIFIED
        );
        let declared = crate::conditions::content_length(head.headers()).filter(|_| !bodiless);
        let streamed = Arc::new(Streamed {
            head,
            tape: Tape::new(declared),
            varied: None,
            whole: std::sync::OnceLock::new(),
        });
        Some(Self {
            streamed,
            token: read.token,
            watch,
            have: 0,
        })
    }

    pub(crate) fn streamed(&self) -> &Arc<Streamed> {
        &self.streamed
    }

    /// Reads the stream to its end into the tape, and says how it ended.
    /// `close` takes the flight out of the table once the tape has dropped
    /// its first bytes (see [`Pump::run`](crate::origin::Pump::run)).
    pub(crate) async fn run<E>(
        mut self,
        shared: &Shared<E>,
        key: &Key,
        close: impl Fn(),
    ) -> Landing {
        let config = &shared.config;
        let tape = self.streamed.tape.clone();
        let _ends = crate::tape::EndsTape::new(&tape);
        let window = window(shared);
        let mut closed = false;
        let mut progress = Instant::now();
        let mut retry = RETRY_FIRST;
        // Since when reads have failed, one after another.
        let mut failing: Option<Instant> = None;
        let failure = 'follow: loop {
            // Everything there is to read now.
            let end = loop {
                let (token, have) = (self.token.as_str(), self.have);
                let read = optional(shared, Op::ReadStream, |b| {
                    b.read_stream(key, Some(token), have, READ_MAX)
                })
                .await;
                let read = match read {
                    Ok(Some(read)) if !read.dropped => read,
                    Ok(Some(_)) => {
                        break 'follow "the stream's window moved past this reader".to_owned()
                    }
                    Ok(None) => break 'follow "the instance leading the flight stopped".to_owned(),
                    Err(unavailable) => {
                        let since = *failing.get_or_insert_with(Instant::now);
                        if since.elapsed() >= config.lease
                            || progress.elapsed() >= config.wait_timeout
                        {
                            unavailable.report(
                                &shared.counters,
                                "reading another instance's answer",
                                "its callers get an error",
                            );
                            break 'follow format!(
                                "the stream of another instance's answer could not be read for {:?}",
                                since.elapsed()
                            );
                        }
                        unavailable.report(
                            &shared.counters,
                            "reading another instance's answer",
                            "trying again",
                        );
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(RETRY_MAX);
                        continue;
                    }
                };
                retry = RETRY_FIRST;
                failing = None;
                if !read.bytes.is_empty() {
                    self.have += read.bytes.len() as u64;
                    tape.push(read.bytes);
                    progress = Instant::now();
                    if tape.len() > config.max_stored_bytes as u64 && tape.trim(window) && !closed {
                        closed = true;
                        close();
                    }
                }
                if self.have >= read.len {
                    break read.end;
                }
            };
            match end {
                Some(StreamEnd::Failed) => {
                    break "the origin's body failed in the instance leading the flight".to_owned()
                }
                Some(StreamEnd::Complete(trailers)) => {
                    if let Some(declared) = tape.declared().filter(|d| *d != self.have) {
                        break format!(
                            "the stream ended after {} of the {declared} bytes declared",
                            self.have
                        );
                    }
                    tape.complete(trailers);
                    return self.landing(shared);
                }
                None => {}
            }
            // News, or a look once per lease third: a leading instance that
            // stopped leaves a stream that expires within a lease.
            let recheck = config.lease / 3;
            tokio::select! {
                notice = self.watch.changed() => {
                    if notice.is_none() {
                        break "the backend stopped delivering news of the stream".to_owned();
                    }
                }
                () = tokio::time::sleep(recheck) => {}
            }
            if progress.elapsed() >= config.wait_timeout {
                break format!(
                    "no byte of the answer arrived for {:?}",
                    config.wait_timeout
                );
            }
        };
        tape.fail(&failure);
        Landing::Failed(FlightError::new(FlightErrorKind::Body, failure))
    }

    /// The landing of a complete stream: the whole answer, if small enough
    /// to keep whole.
    fn landing<E>(&self, shared: &Shared<E>) -> Landing {
        let tape = &self.streamed.tape;
        if tape.len() > shared.config.max_stored_bytes as u64 {
            return Landing::Streaming(self.streamed.clone());
        }
        match tape.joined() {
            Some((data, trailers)) => {
                let entry = self.streamed.head.with_body(data, trailers);
                let _ = self.streamed.whole.set(entry.clone());
                Landing::Done(entry)
            }
            None => Landing::Streaming(self.streamed.clone()),
        }
    }
}

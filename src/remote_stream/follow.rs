//! A waiting process's side of a streamed answer: another process's
//! answer, read from the backend into a tape of this process's own.

use super::resume::{self, Resume};
use super::{window, READ_MAX, RETRY_FIRST, RETRY_MAX};
use crate::backend::{StreamEnd, StreamRead, Watch};
use crate::backend_call::{optional, Op};
use crate::flight::{Landing, Streamed};
use crate::shared::Shared;
use crate::stats::bump;
use crate::tape::Tape;
use crate::{FlightError, FlightErrorKind, Key};
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
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
    /// How to ask the origin for the rest, should the leading process
    /// stop mid-body.
    resume: Option<Resume>,
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
            resume: None,
        })
    }

    /// Resumes the answer from the origin with `resume` if the leading
    /// process stops mid-body (see [`resume`](super::resume)).
    pub(crate) fn resuming(mut self, resume: Resume) -> Self {
        self.resume = Some(resume);
        self
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
                    Ok(None) => match self.take_over(shared, &mut closed, &close).await {
                        Ok(()) => return self.landing(shared),
                        Err(why) => break 'follow why,
                    },
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
                    self.push(shared, read.bytes, &mut closed, &close);
                    progress = Instant::now();
                }
                if self.have >= read.len {
                    break read.end;
                }
            };
            match end {
                Some(StreamEnd::Failed) => {
                    break "the origin's body failed in the instance leading the flight".to_owned()
                }
                Some(StreamEnd::Complete(trailers)) => match self.end(trailers, "the stream") {
                    Ok(()) => return self.landing(shared),
                    Err(why) => break why,
                },
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
        // Out of the table first, as a flight reading the origin does.
        if !closed {
            close();
        }
        tape.fail(&failure);
        Landing::Failed(FlightError::new(FlightErrorKind::Body, failure))
    }

    /// The instance leading the flight stopped mid-body (its stream is
    /// gone): the rest of the answer from the origin, onto the tape, when
    /// it can be resumed; why the callers' bodies fail otherwise.
    async fn take_over<E>(
        &mut self,
        shared: &Shared<E>,
        closed: &mut bool,
        close: &impl Fn(),
    ) -> Result<(), String> {
        const STOPPED: &str = "the instance leading the flight stopped";
        let head = &self.streamed.head;
        let tag = resume::strong_tag(head.status(), head.headers()).cloned();
        let (Some(resume), Some(tag)) = (self.resume.take(), tag) else {
            return Err(format!(
                "{STOPPED}, and its answer has no strong entity tag to resume it with"
            ));
        };
        let from = self.have;
        tracing::info!(
            from,
            "{STOPPED} mid-body; asking the origin for the rest of the answer"
        );
        bump(&shared.counters.origin_calls);
        bump(&shared.counters.resumes);
        let limit = shared.config.wait_timeout;
        let res = tokio::time::timeout(limit, resume.send(from, &tag))
            .await
            .map_err(|_| {
                format!("{STOPPED}; the origin did not answer for the rest within {limit:?}")
            })?
            .map_err(|e| format!("{STOPPED}; asking the origin for the rest failed: {e}"))?;
        let mut skip = resume::skip(&res, &tag, from, self.streamed.tape.declared())
            .map_err(|why| format!("{STOPPED}; {why}"))?;
        let mut body = res.into_body();
        let mut trailers = None;
        while let Some(frame) = tokio::time::timeout(limit, body.frame())
            .await
            .map_err(|_| format!("no byte of the rest of the answer arrived for {limit:?}"))?
        {
            let frame = frame.map_err(|e| format!("the rest of the answer failed: {e}"))?;
            let mut data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    continue;
                }
            };
            let skipped = skip.min(data.len() as u64);
            skip -= skipped;
            let data = data.split_off(skipped as usize);
            if !data.is_empty() {
                self.push(shared, data, closed, close);
            }
        }
        if skip > 0 {
            return Err(format!(
                "the origin's answer for the rest ended before byte {from}"
            ));
        }
        self.end(trailers, "the resumed answer")
    }

    /// Puts bytes read on the tape. Past what may be kept whole the tape
    /// keeps only its window, and once it has dropped its first bytes the
    /// flight leaves the table (`close`, once: `closed` says whether it
    /// has).
    fn push<E>(&mut self, shared: &Shared<E>, bytes: Bytes, closed: &mut bool, close: &impl Fn()) {
        let tape = &self.streamed.tape;
        self.have += bytes.len() as u64;
        tape.push(bytes);
        let kept_whole = shared.config.max_stored_bytes as u64;
        if tape.len() > kept_whole && tape.trim(window(shared)) && !*closed {
            *closed = true;
            close();
        }
    }

    /// Ends the tape with `trailers` if it holds the length its head
    /// declared; why not otherwise (`what` ended short).
    fn end(&self, trailers: Option<HeaderMap>, what: &str) -> Result<(), String> {
        let tape = &self.streamed.tape;
        if let Some(declared) = tape.declared().filter(|d| *d != self.have) {
            return Err(format!(
                "{what} ended after {} of the {declared} bytes declared",
                self.have
            ));
        }
        tape.complete(trailers);
        Ok(())
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

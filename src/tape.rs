//! A flight's answer as it arrives: one append-only sequence of body chunks
//! and how it ended, written by the flight's task as it reads the origin,
//! read by every caller of the flight at its own pace.
//!
//! One copy per flight: a reader clones the chunks' `Bytes` handles, never
//! their bytes. A reader that finds nothing new waits on the tape's
//! [`Notify`], woken by the next append or by the end; it never polls.
//!
//! A tape never presents a failed answer as a complete one: a body that
//! failed, ended short of its declared length, or was given up makes every
//! reader's body end in an error (pingora#932 is the bug this prevents).
//!
//! An answer that will not be stored keeps only a window of its latest
//! bytes: a reader that falls further behind gets an error, never a body
//! with bytes missing.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::BoxError;

/// The shared answer body of one flight.
#[derive(Debug)]
pub(crate) struct Tape {
    reel: Mutex<Reel>,
    /// Woken on every append and at the end.
    grew: Arc<Notify>,
    /// The length the head declared, if it did.
    declared: Option<u64>,
    /// Readers alive.
    readers: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Default)]
struct Reel {
    chunks: VecDeque<Bytes>,
    /// The index of `chunks[0]` in the whole sequence (above zero once the
    /// window dropped some).
    first: usize,
    /// The bytes `chunks` holds.
    held: usize,
    /// The bytes appended so far.
    len: u64,
    end: Option<End>,
}

/// How a tape ended.
#[derive(Debug, Clone)]
enum End {
    /// Complete, with these trailers.
    Complete(Option<HeaderMap>),
    /// Failed; every reader's body ends in this error.
    Failed(Arc<str>),
}

impl Tape {
    /// An empty tape for a body whose head declared `declared` bytes.
    pub(crate) fn new(declared: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            reel: Mutex::default(),
            grew: Arc::default(),
            declared,
            readers: Default::default(),
        })
    }

    fn reel(&self) -> std::sync::MutexGuard<'_, Reel> {
        crate::sync::lock(&self.reel)
    }

    /// Appends a chunk, waking the readers that wait.
    pub(crate) fn push(&self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        {
            let mut reel = self.reel();
            reel.len += chunk.len() as u64;
            reel.held += chunk.len();
            reel.chunks.push_back(chunk);
        }
        self.grew.notify_waiters();
    }

    /// How many readers are alive.
    pub(crate) fn readers(&self) -> usize {
        self.readers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The length the head declared, if it did.
    pub(crate) fn declared(&self) -> Option<u64> {
        self.declared
    }

    /// The bytes appended so far.
    pub(crate) fn len(&self) -> u64 {
        self.reel().len
    }

    /// Drops the oldest chunks while more than `window` bytes are held.
    /// Returns whether any chunk was ever dropped (the tape no longer
    /// starts at its first byte).
    pub(crate) fn trim(&self, window: usize) -> bool {
        let mut reel = self.reel();
        while reel.held > window && reel.chunks.len() > 1 {
            if let Some(chunk) = reel.chunks.pop_front() {
                reel.held -= chunk.len();
                reel.first += 1;
            }
        }
        reel.first > 0
    }

    /// Ends the tape complete, with `trailers`.
    pub(crate) fn complete(&self, trailers: Option<HeaderMap>) {
        self.end(End::Complete(trailers));
    }

    /// Ends the tape failed: every reader's body errors with `why`.
    pub(crate) fn fail(&self, why: &str) {
        self.end(End::Failed(why.into()));
    }

    fn end(&self, end: End) {
        {
            let mut reel = self.reel();
            if reel.end.is_some() {
                return;
            }
            reel.end = Some(end);
        }
        self.grew.notify_waiters();
    }

    /// The chunks appended so far, if the tape still holds them all (each
    /// shared, not copied).
    pub(crate) fn chunks_from_start(&self) -> Option<Vec<Bytes>> {
        let reel = self.reel();
        (reel.first == 0).then(|| reel.chunks.iter().cloned().collect())
    }

    /// The whole body, joined, and the trailers, once the tape is complete
    /// and still holds all of it.
    pub(crate) fn joined(&self) -> Option<(Bytes, Option<HeaderMap>)> {
        let reel = self.reel();
        let Some(End::Complete(trailers)) = &reel.end else {
            return None;
        };
        if reel.first > 0 {
            return None;
        }
        let data = match reel.chunks.len() {
            0 => Bytes::new(),
            1 => reel.chunks[0].clone(),
            _ => {
                let mut joined = BytesMut::with_capacity(reel.held);
                reel.chunks.iter().for_each(|c| joined.extend_from_slice(c));
                joined.freeze()
            }
        };
        Some((data, trailers.clone()))
    }

    /// A reader from the first byte, or `None` if the window has dropped
    /// it: a caller that comes that late starts a new flight.
    pub(crate) fn reader(self: &Arc<Self>) -> Option<TapeReader> {
        if self.reel().first > 0 {
            return None;
        }
        self.readers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(TapeReader {
            tape: self.clone(),
            next: 0,
            given: 0,
            trailers_sent: false,
            waiting: None,
        })
    }
}

/// Fails its tape when dropped, if nothing ended it: a flight stopped with
/// its body unread (the layer shut down, the task dropped, a panic) leaves
/// no reader waiting.
pub(crate) struct EndsTape(Arc<Tape>);

impl EndsTape {
    pub(crate) fn new(tape: &Arc<Tape>) -> Self {
        Self(tape.clone())
    }
}

impl Drop for EndsTape {
    fn drop(&mut self) {
        self.0
            .fail("the flight stopped before its answer's body ended");
    }
}

/// One caller's place in a [`Tape`].
#[derive(Debug)]
pub(crate) struct TapeReader {
    tape: Arc<Tape>,
    /// The index of the next chunk to give.
    next: usize,
    /// The bytes given so far.
    given: u64,
    trailers_sent: bool,
    /// Registered for the tape's next change.
    waiting: Option<Pin<Box<OwnedNotified>>>,
}

impl Drop for TapeReader {
    fn drop(&mut self) {
        self.tape
            .readers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

type Polled = Option<Result<Frame<Bytes>, BoxError>>;

impl TapeReader {
    /// The next frame, if the tape has one (or its end) for this reader.
    fn read(&mut self) -> Option<Polled> {
        let reel = self.tape.reel();
        let Some(at) = self.next.checked_sub(reel.first) else {
            return Some(Some(Err("this response fell too far behind the flight's \
                                   answer, whose window has moved on"
                .into())));
        };
        if let Some(chunk) = reel.chunks.get(at) {
            self.next += 1;
            self.given += chunk.len() as u64;
            return Some(Some(Ok(Frame::data(chunk.clone()))));
        }
        match &reel.end {
            None => None,
            Some(End::Failed(why)) => Some(Some(Err(why.to_string().into()))),
            Some(End::Complete(trailers)) => {
                if self.trailers_sent {
                    return Some(None);
                }
                self.trailers_sent = true;
                Some(trailers.clone().map(|t| Ok(Frame::trailers(t))))
            }
        }
    }

    pub(crate) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Polled> {
        loop {
            if let Some(waiting) = &mut self.waiting {
                std::task::ready!(waiting.as_mut().poll(cx));
                self.waiting = None;
            }
            if let Some(frame) = self.read() {
                return Poll::Ready(frame);
            }
            // Registered before looking again, so an append between the
            // look above and the wait is not missed.
            let mut waiting = Box::pin(self.tape.grew.clone().notified_owned());
            waiting.as_mut().enable();
            if let Some(frame) = self.read() {
                return Poll::Ready(frame);
            }
            self.waiting = Some(waiting);
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        let reel = self.tape.reel();
        self.trailers_sent
            || (self.next >= reel.first + reel.chunks.len()
                && matches!(reel.end, Some(End::Complete(None))))
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.tape.declared {
            Some(len) => SizeHint::with_exact(len.saturating_sub(self.given)),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CoalesceBody;
    use http_body_util::BodyExt;

    type Body = CoalesceBody<http_body_util::Empty<Bytes>>;

    fn body(tape: &Arc<Tape>) -> Body {
        CoalesceBody::tape(tape.reader().expect("from the first byte"))
    }

    #[tokio::test]
    async fn every_reader_gets_every_chunk_and_the_trailers() {
        let tape = Tape::new(Some(6));
        let early = body(&tape);
        tape.push(Bytes::from_static(b"abc"));
        let middle = body(&tape);
        let reading = tokio::spawn(early.collect());
        tokio::task::yield_now().await;
        tape.push(Bytes::from_static(b"def"));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        tape.complete(Some(trailers));
        let late = body(&tape);
        for collected in [
            reading.await.unwrap(),
            middle.collect().await,
            late.collect().await,
        ] {
            let collected = collected.unwrap();
            assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
            assert_eq!(collected.to_bytes(), "abcdef");
        }
        assert_eq!(tape.joined().unwrap().0, "abcdef");
    }

    #[tokio::test]
    async fn a_failed_tape_fails_every_reader_after_the_bytes_it_had() {
        let tape = Tape::new(None);
        let reader = body(&tape);
        let waiting = tokio::spawn(async move {
            let mut reader = std::pin::pin!(reader);
            let first = reader.frame().await.unwrap().unwrap().into_data().unwrap();
            (first, reader.frame().await.unwrap().is_err())
        });
        tape.push(Bytes::from_static(b"ab"));
        tokio::task::yield_now().await;
        tape.fail("the origin's body failed");
        let (first, failed) = waiting.await.unwrap();
        assert_eq!(first, "ab");
        assert!(failed, "a failed tape must end every reader in an error");
        assert!(body(&tape).collect().await.is_err());
        assert!(tape.joined().is_none());
    }

    #[tokio::test]
    async fn a_reader_past_the_window_errors_and_late_callers_get_no_reader() {
        let tape = Tape::new(None);
        let slow = body(&tape);
        for chunk in ["aaaa", "bbbb", "cccc"] {
            tape.push(Bytes::from(chunk));
        }
        assert!(tape.trim(8), "one chunk is over the window");
        assert!(tape.reader().is_none(), "the first byte is gone");
        tape.complete(None);
        let err = slow.collect().await.unwrap_err();
        assert!(err.to_string().contains("fell too far behind"), "{err}");
    }
}

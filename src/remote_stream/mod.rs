//! A flight's answer streamed across processes, above the
//! [`Streams`](crate::Streams) trait: the leading process publishes the body
//! as it reads it ([`Publisher`]); a process waiting on its lease reads it
//! into a tape of its own, which its callers read ([`Follow`]).
//!
//! Publishing waits until the body has been arriving for a moment (5 ms, or
//! 64 KiB): an answer that is whole by then travels in its completion as
//! before, and costs no stream. An answer whose head declares more than
//! 64 KiB cannot be whole by then: its stream opens with its head, and its
//! first bytes are written as they come. Then one write per 5 ms or 64 KiB,
//! whichever comes first. A reader reads what it lacks by offset, woken by
//! the stream's messages and looking again once per lease third, so a lost
//! message costs latency, never bytes. Nothing here ever serves bytes of
//! one flight as another's: every read names the stream's lease token.
//!
//! A Redis that answers late for a moment (a busy one does) costs latency
//! too, not the answer: a write that failed or timed out is sent again,
//! with the bytes that came since, at the same offset (the backend appends
//! only what it lacks), for up to a lease; a read that failed is tried
//! again, also for up to a lease. Waits between tries start at 50 ms and
//! double up to a second. Past that the readers' bodies fail: their
//! callers already have part of the answer, and nothing else can finish
//! it.

mod follow;
mod resume;

pub(crate) use follow::Follow;
pub(crate) use resume::Resume;

use crate::backend::{LeaseToken, StreamEnd};
use crate::backend_call::{optional, Op, Unavailable};
use crate::flight::Streamed;
use crate::shared::Shared;
use crate::Key;
use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::time::Instant;

/// Bytes gathered before a write, at most.
const BATCH: usize = 64 * 1024;
/// How long bytes wait to be written, at most.
const BATCH_DELAY: Duration = Duration::from_millis(5);
/// The most bytes one read asks for.
const READ_MAX: usize = 1 << 20;
/// The first wait before a failed write or read is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// The longest wait between tries.
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The leading process's side: the body, published as it is read.
pub(crate) struct Publisher {
    key: Key,
    token: LeaseToken,
    /// Bytes not written yet.
    pending: BytesMut,
    /// When they are to be written: a moment after the first of them
    /// arrived, or when a write that failed is tried again.
    due_at: Option<Instant>,
    /// Bytes written so far.
    sent: u64,
    opened: bool,
    /// Given up (the backend failed, or does not stream).
    off: bool,
    /// Since when writes have failed, and the wait before the next try.
    failing: Option<(Instant, Duration)>,
}

impl Publisher {
    pub(crate) fn new(key: Key, token: LeaseToken) -> Self {
        Self {
            key,
            token,
            pending: BytesMut::new(),
            due_at: None,
            sent: 0,
            opened: false,
            off: false,
            failing: None,
        }
    }

    /// Takes a chunk of the body; true if a write is due now: a batch is
    /// full, or these are the first bytes of a stream opened with its head.
    pub(crate) fn add(&mut self, chunk: &Bytes) -> bool {
        if self.off {
            return false;
        }
        self.due_at
            .get_or_insert_with(|| Instant::now() + BATCH_DELAY);
        self.pending.extend_from_slice(chunk);
        // While writes fail, the next try waits its turn, however much
        // comes meanwhile. Batches end on multiples of a batch, so that a
        // stream whose first bytes went alone still writes and reads its
        // pieces (multiples of a batch) whole.
        let batched = self.sent as usize % BATCH + self.pending.len() >= BATCH;
        self.failing.is_none() && (batched || self.opened && self.sent == 0)
    }

    /// When the bytes waiting must be written, if any wait.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.due_at.filter(|_| !self.off)
    }

    /// Opens the stream at once, with the head, if the body is declared
    /// longer than a batch: such an answer cannot travel in its completion
    /// message, and the other instances' callers then have its head before
    /// its body comes, and its first bytes as soon as they come (see
    /// [`add`](Self::add)).
    pub(crate) async fn open_if_long<E>(&mut self, shared: &Shared<E>, streamed: &Streamed) {
        if streamed
            .tape
            .declared()
            .is_some_and(|len| len > BATCH as u64)
        {
            self.open(shared, streamed).await;
        }
    }

    /// Opens the stream; false if it was not opened (and publishing is
    /// given up).
    async fn open<E>(&mut self, shared: &Shared<E>, streamed: &Streamed) -> bool {
        if self.off {
            return false;
        }
        let (key, token, head) = (&self.key, &self.token, &streamed.head);
        let lease = shared.config.lease;
        match optional(shared, Op::OpenStream, |b| {
            b.open_stream(key, token, head, lease)
        })
        .await
        {
            Ok(true) => self.opened = true,
            Ok(false) => self.off = true,
            Err(unavailable) => {
                unavailable.report(
                    &shared.counters,
                    "opening the answer's stream",
                    "other instances get the answer when it is complete",
                );
                self.off = true;
            }
        }
        self.opened
    }

    /// Writes what waits, opening the stream first if it is not open.
    pub(crate) async fn flush<E>(&mut self, shared: &Shared<E>, streamed: &Streamed) {
        self.due_at = None;
        if self.off || self.pending.is_empty() {
            return;
        }
        if !self.opened && !self.open(shared, streamed).await {
            return;
        }
        let lease = shared.config.lease;
        let bytes = self.pending.split().freeze();
        let len = bytes.len() as u64;
        let bounds = (lease, window(shared));
        let (key, token, at, sent) = (&self.key, &self.token, self.sent, bytes.clone());
        match optional(shared, Op::AppendStream, |b| {
            b.append_stream(key, token, at, sent, bounds)
        })
        .await
        {
            Ok(true) => {
                self.sent += len;
                self.failing = None;
            }
            Ok(false) => self.off = true,
            Err(unavailable) => self.retry_later(shared, bytes, &unavailable).await,
        }
    }

    /// After a write of `bytes` failed: keeps them, before what came since,
    /// to be written again at the same offset once the wait is over — or
    /// gives up, once writes have failed for a lease or more than the
    /// window waits.
    async fn retry_later<E>(
        &mut self,
        shared: &Shared<E>,
        bytes: Bytes,
        unavailable: &Unavailable,
    ) {
        let mut kept = BytesMut::with_capacity(bytes.len() + self.pending.len());
        kept.extend_from_slice(&bytes);
        kept.extend_from_slice(&self.pending);
        self.pending = kept;
        let now = Instant::now();
        let (since, wait) = *self.failing.get_or_insert((now, RETRY_FIRST));
        if now - since >= shared.config.lease || self.pending.len() > window(shared) {
            unavailable.report(
                &shared.counters,
                "writing the answer's stream",
                "its readers in other instances get an error",
            );
            self.give_up(shared).await;
            return;
        }
        unavailable.report(
            &shared.counters,
            "writing the answer's stream",
            "trying again",
        );
        self.due_at = Some(now + wait);
        self.failing = Some((since, (wait * 2).min(RETRY_MAX)));
    }

    /// Ends the stream, if one was opened: complete with `trailers` once the
    /// rest is written, or failed.
    pub(crate) async fn end<E>(&mut self, shared: &Shared<E>, streamed: &Streamed, end: StreamEnd) {
        if !self.opened || self.off {
            return;
        }
        if matches!(end, StreamEnd::Complete(_)) {
            loop {
                self.flush(shared, streamed).await;
                if self.off {
                    return;
                }
                if self.pending.is_empty() {
                    break;
                }
                // A write failed: tried again when due (see `retry_later`).
                if let Some(at) = self.due_at {
                    tokio::time::sleep_until(at).await;
                }
            }
        }
        let (key, token, lease) = (&self.key, &self.token, shared.config.lease);
        let started = Instant::now();
        let mut wait = RETRY_FIRST;
        loop {
            let end = end.clone();
            let Err(unavailable) = optional(shared, Op::EndStream, |b| {
                b.end_stream(key, token, end, lease)
            })
            .await
            else {
                return;
            };
            if started.elapsed() >= lease {
                unavailable.report(
                    &shared.counters,
                    "ending the answer's stream",
                    "its readers in other instances get an error when it expires",
                );
                return;
            }
            unavailable.report(
                &shared.counters,
                "ending the answer's stream",
                "trying again",
            );
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
        }
    }

    /// Stops publishing; readers learn the stream failed, if that can
    /// still be told.
    async fn give_up<E>(&mut self, shared: &Shared<E>) {
        self.off = true;
        let (key, token, lease) = (&self.key, &self.token, shared.config.lease);
        let _ = optional(shared, Op::EndStream, |b| {
            b.end_stream(key, token, StreamEnd::Failed, lease)
        })
        .await;
    }
}

/// The bytes of an answer that will not be stored that a stream keeps, at
/// most: the latest ones.
fn window<E>(shared: &Shared<E>) -> usize {
    let config = &shared.config;
    config.stream_window.max(config.max_stored_bytes)
}

//! [`Streams`]: how a flight's answer reaches the waiters in other processes
//! while its body is still arriving.
//!
//! The leading process opens a stream under the key once the body has been
//! arriving for a moment (an answer that is whole by then is handed over by
//! its completion, as before), appends the body in batches, and ends it —
//! complete with its trailers, or failed. Waiters read what they lack by
//! offset, woken by [`Notice::Streaming`](super::Notice::Streaming), so a
//! lost message costs latency, never bytes. A stream belongs to the lease
//! token that opened it: a reader never mixes two flights' bytes.

use super::{BackendFuture, LeaseToken};
use crate::{Entry, Key};
use bytes::Bytes;
use http::HeaderMap;
use std::time::Duration;

/// How a stream ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StreamEnd {
    /// The body is complete; these are its trailers.
    Complete(Option<HeaderMap>),
    /// The body failed: every reader's body must end in an error.
    Failed,
}

/// What [`Streams::read_stream`] found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StreamRead {
    /// The token of the flight whose stream this is.
    pub token: String,
    /// The answer's head (an entry without a body), when read from the
    /// start.
    pub head: Option<Entry>,
    /// Bytes from the offset asked for (at most the number asked for).
    pub bytes: Bytes,
    /// The length of the body so far.
    pub len: u64,
    /// How it ended, once it has.
    pub end: Option<StreamEnd>,
    /// The bytes at the offset asked for are gone (the stream keeps a
    /// window of its latest bytes, and its pieces expire): the reader
    /// cannot go on.
    pub dropped: bool,
}

impl StreamRead {
    /// A read of the stream of `token`.
    pub fn new(token: String, len: u64) -> Self {
        Self {
            token,
            head: None,
            bytes: Bytes::new(),
            len,
            end: None,
            dropped: false,
        }
    }
}

/// The stream of one flight's answer, for the processes waiting on it.
/// A backend that shares nothing between processes says so: `open_stream`
/// answers `false`, and the others are never called.
pub trait Streams: Send + Sync + 'static {
    /// Opens the stream of the flight holding the lease `token`, with the
    /// answer's `head` (an entry without a body) and its first `bytes`, and
    /// announces it to the key's waiters. `ttl`: how long what it writes
    /// lasts past its last write. `false`: the lease is no longer the
    /// flight's, or this backend does not stream between processes.
    fn open_stream<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        head: &'a Entry,
        ttl: Duration,
    ) -> BackendFuture<'a, bool>;

    /// Appends `bytes` to the stream of `token`, whose body has `at` bytes
    /// before them, and announces it. `bounds`: the lease (what it writes
    /// lasts a few of them past its last write), and the window (of a body
    /// longer than it, only about the latest that many bytes need be
    /// kept). `false`: the stream is no longer the flight's, or it is out
    /// of step (shorter than `at`).
    ///
    /// A write that failed or timed out may have been applied all the
    /// same, and is sent again at the same `at`, with the bytes that came
    /// since after it: what the stream already holds of them must not be
    /// appended twice.
    fn append_stream<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        at: u64,
        bytes: Bytes,
        bounds: (Duration, usize),
    ) -> BackendFuture<'a, bool>;

    /// Ends the stream of `token`, and announces it.
    fn end_stream<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        end: StreamEnd,
        ttl: Duration,
    ) -> BackendFuture<'a, ()>;

    /// Reads up to `max` bytes of the key's stream from byte `from`: of the
    /// stream of `token`, or (`None`) of whichever flight's stream is under
    /// way, with its head. `None`: no such stream (it ended long enough ago
    /// to have expired, or its flight's process stopped). A stream that
    /// ended is read through its `token` for as long as its bytes last,
    /// also once the key's next flight has a stream of its own: a reader a
    /// little behind reads the end of the one it follows.
    fn read_stream<'a>(
        &'a self,
        key: &'a Key,
        token: Option<&'a str>,
        from: u64,
        max: usize,
    ) -> BackendFuture<'a, Option<StreamRead>>;
}

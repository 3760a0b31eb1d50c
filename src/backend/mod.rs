//! Where answers are stored between flights, behind the [`Backend`] trait.
//!
//! The layer owns the request path — flights, followers, policy — and asks a
//! backend only to find and keep entries. Protocol logic that every backend
//! would need lives above this trait, once. [`MemoryBackend`] is the embedded
//! default; [`RedisBackend`] shares entries between processes.

mod memory;
mod redis;

pub use self::redis::{RedisBackend, RedisBackendBuilder};
pub use memory::{MemoryBackend, MemoryBackendBuilder};

use crate::{Entry, Key};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The future a [`Backend`] returns.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send + 'a>>;

/// A store of entries shared by the services of one layer (and, for a
/// distributed backend, by every process that uses the same store).
///
/// A backend that fails must say so with a [`BackendError`]: the layer then
/// answers from the origin and counts the failure; a request never fails
/// because its backend did.
pub trait Backend: Send + Sync + 'static {
    /// An entry this process already holds in memory, without waiting.
    ///
    /// Called on every keyed request before a flight is joined, so it must be
    /// cheap; a backend that has nothing in process memory returns `None`
    /// (the default).
    fn get_local(&self, key: &Key) -> Option<Entry> {
        let _ = key;
        None
    }

    /// The fresh entry stored under `key`, if any. Called by a flight's leader
    /// only, never by its followers.
    fn lookup<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<Entry>>;

    /// Stores `entry` under `key` for `ttl`.
    fn store<'a>(&'a self, key: &'a Key, entry: Entry, ttl: Duration) -> BackendFuture<'a, ()>;
}

/// A backend operation that failed.
#[derive(Debug)]
pub struct BackendError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BackendError {
    /// An error with this message and cause.
    pub fn new(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An error with this message alone.
    pub fn msg(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

//! Invalidation: purges of a key, of a resource (a URL with all its
//! variants and methods) and of a tag, ordered against fills rather than
//! found by scans.
//!
//! Every purge takes a position in one order, the purge sequence a backend
//! keeps (a counter in Redis, shared by every process; a counter in
//! memory for [`MemoryBackend`](crate::MemoryBackend)). A fill notes the
//! latest position its process knows *before* it calls the origin. An entry
//! is purged when a purge of its key, its resource or one of its tags has a
//! later position than its fill: an answer made from data read before the
//! purge. So a purge that lands during a fill makes that fill's answer
//! purged on arrival, and it is not stored; and purging a tag carried by
//! 100,000 entries is one record, which lookups compare with, not 100,000
//! deletions.
//!
//! A process may know a position later than the true one's predecessor,
//! never later than the true one: what it knows was announced by a purge
//! that already happened. A fill that starts just after a purge its process
//! has not heard of yet notes an earlier position; its answer then counts as
//! purged once that purge is heard — one origin call more, never an answer
//! from before the purge.

mod log;
mod merge;
mod purger;
mod tags;
mod writes;

pub(crate) use log::PurgeLog;
pub(crate) use merge::Merges;
pub use purger::Purger;
pub(crate) use tags::tags_of;
pub(crate) use writes::Write;

use crate::Key;
use sha2::{Digest, Sha256};
use std::fmt;

/// The longest tag accepted, in bytes.
pub const MAX_TAG_BYTES: usize = 256;

/// The most tags one answer carries; more are ignored (and logged).
pub const MAX_TAGS: usize = 64;

/// A tag: a name an answer carries (from a response header such as
/// `Surrogate-Key`, or from [`CoalesceConfig::tags`](crate::CoalesceConfig::tags)),
/// by which every answer carrying it can be purged at once.
///
/// One to [`MAX_TAG_BYTES`] bytes of visible ASCII, without spaces or
/// commas (which separate tags in a header).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Tag(String);

impl Tag {
    /// The tag, if `name` is one.
    pub fn new(name: impl Into<String>) -> Result<Self, PurgeError> {
        let name = name.into();
        if name.is_empty() {
            return Err(PurgeError::bad_tag("an empty tag"));
        }
        if name.len() > MAX_TAG_BYTES {
            return Err(PurgeError::bad_tag(format!(
                "a tag of {} bytes (at most {MAX_TAG_BYTES})",
                name.len()
            )));
        }
        if !name.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Err(PurgeError::bad_tag(
                "a tag with a space, a comma or a byte that is not visible ASCII",
            ));
        }
        Ok(Tag(name))
    }

    /// The tag's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tags in a header value: separated by spaces (and commas);
    /// anything that is not a tag is skipped.
    pub(crate) fn parse_list(value: &[u8]) -> impl Iterator<Item = Tag> + '_ {
        value
            .split(|b| *b == b' ' || *b == b',' || *b == b'\t')
            .filter(|t| !t.is_empty())
            .filter_map(|t| std::str::from_utf8(t).ok())
            .filter_map(|t| Tag::new(t).ok())
    }

    /// What entries ([`Entry::tags`](crate::Entry::tags)) and purge
    /// records hold of the tag: 128 bits of SHA-256 of it.
    pub fn digest(&self) -> [u8; 16] {
        digest(b't', &[self.0.as_bytes()])
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({:?})", self.0)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 128 bits of SHA-256.
pub(crate) type Digest16 = [u8; 16];

fn digest(kind: u8, parts: &[&[u8]]) -> Digest16 {
    let mut hasher = Sha256::new();
    hasher.update([kind]);
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize()[..16]);
    out
}

/// What a purge drops.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Purge {
    /// The answers stored under this key (its resource, variant and
    /// method).
    Key(Key),
    /// Every answer of this key's resource: all its variants and methods
    /// (for [`HttpKey`](crate::HttpKey), one URL).
    Resource(Key),
    /// Every answer carrying this tag.
    Tag(Tag),
    /// What a successful write changed: every answer of this key's
    /// resource, as [`Resource`](Self::Resource) — but a resource with
    /// nothing stored and no flight under way, in any process, is not
    /// purged at all: nothing could be served from before the write, so
    /// the purge records nothing (a flood of writes to URLs nobody read
    /// fills no purge log, and leaves nothing in Redis).
    Written(Key),
}

impl Purge {
    /// The record a purge log keeps of it.
    pub(crate) fn target(&self) -> Target {
        match self {
            Purge::Key(key) => Target::key(key),
            Purge::Resource(key) | Purge::Written(key) => Target::resource(key),
            Purge::Tag(tag) => Target::tag(tag.digest()),
        }
    }
}

/// What kind of thing a purge record names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Key,
    Resource,
    Tag,
}

impl Kind {
    /// Its byte in purge messages and records.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn code(self) -> u8 {
        match self {
            Kind::Key => b'k',
            Kind::Resource => b'r',
            Kind::Tag => b't',
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            b'k' => Some(Kind::Key),
            b'r' => Some(Kind::Resource),
            b't' => Some(Kind::Tag),
            _ => None,
        }
    }
}

/// A purge record's subject: a kind and a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    pub(crate) kind: Kind,
    pub(crate) digest: Digest16,
}

impl Target {
    pub(crate) fn key(key: &Key) -> Self {
        Target {
            kind: Kind::Key,
            digest: digest(b'k', &[&key.resource_digest(), &key.variant_digest()]),
        }
    }

    pub(crate) fn resource(key: &Key) -> Self {
        Target {
            kind: Kind::Resource,
            digest: key.resource_digest(),
        }
    }

    pub(crate) fn tag(digest: Digest16) -> Self {
        Target {
            kind: Kind::Tag,
            digest,
        }
    }

    /// Its 17-byte form: the kind's code, then the digest.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn to_bytes(self) -> [u8; 17] {
        let mut out = [0u8; 17];
        out[0] = self.kind.code();
        out[1..].copy_from_slice(&self.digest);
        out
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (&code, digest) = bytes.split_first()?;
        Some(Target {
            kind: Kind::from_code(code)?,
            digest: digest.try_into().ok()?,
        })
    }
}

/// A place in a backend's purge order: the order's *epoch*, then the
/// position within it. Compared in that order.
///
/// A backend shared by processes starts a new epoch, later than every one
/// before, whenever it finds its purge sequence lost (Redis restarted
/// without its data, flushed, or failed over to a replica that lagged):
/// anything filled in an earlier epoch then counts as purged, since the
/// purges it should be judged against may have been lost. A backend
/// private to one process has one epoch, 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PurgePosition {
    /// The purge order's epoch.
    pub epoch: u64,
    /// The position within the epoch (0: before its first purge).
    pub position: u64,
}

impl PurgePosition {
    /// `position` in `epoch`.
    pub const fn new(epoch: u64, position: u64) -> Self {
        Self { epoch, position }
    }
}

impl fmt::Display for PurgePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.position)
    }
}

/// What a purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Purged {
    /// Its position in the backend's purge order (within [`epoch`](Self::epoch)):
    /// answers whose fill started before it are no longer served.
    pub position: u64,
    /// The purge order's epoch (see [`PurgePosition`]).
    pub epoch: u64,
    /// Whether it was recorded in a backend shared with other processes
    /// and announced to them (`false` for a backend private to this
    /// process, where there is nobody else to tell).
    pub shared: bool,
}

impl Purged {
    /// What a backend's [`Invalidation::purge`](crate::Invalidation::purge)
    /// reports: the purge's `position`, and whether other processes were
    /// told (`shared`).
    pub fn new(position: u64, shared: bool) -> Self {
        Self {
            position,
            epoch: 0,
            shared,
        }
    }

    /// The same, at `position` of `epoch`.
    pub fn at(position: PurgePosition, shared: bool) -> Self {
        Self {
            position: position.position,
            epoch: position.epoch,
            shared,
        }
    }
}

/// Why a purge could not be done.
#[derive(Debug, Clone)]
pub struct PurgeError {
    kind: PurgeErrorKind,
    message: String,
}

/// What kind of [`PurgeError`] it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PurgeErrorKind {
    /// The tag is not one (see [`Tag::new`]).
    BadTag,
    /// The URL does not parse, or the layer's extractor gives no key for
    /// a `GET` of it: nothing of it is ever stored.
    NotKeyed,
    /// The backend could not record or announce the purge. This process
    /// no longer serves what it names; other processes may, until their
    /// entries expire.
    Backend,
}

impl PurgeError {
    fn bad_tag(message: impl Into<String>) -> Self {
        Self {
            kind: PurgeErrorKind::BadTag,
            message: message.into(),
        }
    }

    pub(crate) fn not_keyed(message: impl Into<String>) -> Self {
        Self {
            kind: PurgeErrorKind::NotKeyed,
            message: message.into(),
        }
    }

    pub(crate) fn backend(error: impl fmt::Display) -> Self {
        Self {
            kind: PurgeErrorKind::Backend,
            message: format!("the purge was not shared: {error}"),
        }
    }

    /// What kind of error it is.
    pub fn kind(&self) -> PurgeErrorKind {
        self.kind
    }
}

impl fmt::Display for PurgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PurgeError {}

#[cfg(test)]
mod tests;

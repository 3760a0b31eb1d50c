//! The Redis names of a key, built in one place: see docs/protocol.md.

use crate::Key;
use redis::{Script, ScriptInvocation};
use std::fmt::Write as _;

/// The name layout's version: instances whose layouts differ share no
/// names, so nothing of one is misread by the other (docs/protocol.md,
/// "Layout 3").
pub(super) const LAYOUT: u32 = 3;

/// The names `RedisBackend` uses for one key:
/// `<namespace>:3:{<resource hash>}:<variant hash>:<suffix>`, and for a
/// selected key (one variant of those its primary key's `Vary` selects)
/// `<namespace>:3:{<resource hash>}:<variant hash>:<selection hash>:<suffix>`.
/// The `3` is the name layout's version: instances of a release with
/// another layout share no names with these. The resource hash is the
/// cluster hash tag, so every variant and method of one resource lives on
/// one slot. The key is hashed once, here; each name is made only when
/// asked for.
pub(super) struct Names {
    prefix: String,
    /// The length of the primary key's prefix within `prefix`.
    primary: usize,
    selected: bool,
}

impl Names {
    pub(super) fn new(namespace: &str, key: &Key) -> Self {
        let mut prefix = String::with_capacity(namespace.len() + 106);
        prefix.push_str(namespace);
        let _ = write!(prefix, ":{LAYOUT}:{{");
        hex(&mut prefix, &key.resource_digest());
        prefix.push_str("}:");
        hex(&mut prefix, &key.variant_digest());
        prefix.push(':');
        let primary = prefix.len();
        let selection = key.selection_digest();
        if let Some(selection) = &selection {
            hex(&mut prefix, selection);
            prefix.push(':');
        }
        Names {
            prefix,
            primary,
            selected: selection.is_some(),
        }
    }

    /// A name of the primary key (the key itself, if it is one).
    fn primary_name(&self, suffix: &str) -> String {
        format!("{}{suffix}", &self.prefix[..self.primary])
    }

    /// The primary key's variants index (a hash: `n` the field names its
    /// answers vary on, `c` a use counter, and one field per stored
    /// variant, its value's name, holding the counter at its last use).
    pub(super) fn index(&self) -> String {
        self.primary_name("vary")
    }

    /// The answer stored under the primary key itself.
    pub(super) fn primary_value(&self) -> String {
        self.primary_name("v")
    }

    /// Whether these are a selected key's names.
    pub(super) fn selected(&self) -> bool {
        self.selected
    }

    pub(super) fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// The stored entry.
    pub(super) fn value(&self) -> String {
        self.name("v")
    }

    /// The lease (its value is the leader's token).
    pub(super) fn lock(&self) -> String {
        self.name("lock")
    }

    /// The pass-through mark.
    pub(super) fn pass(&self) -> String {
        self.name("pass")
    }

    /// The done channel.
    pub(super) fn done(&self) -> String {
        self.name("done")
    }

    /// The mark of the last purge of this key (its variant and method);
    /// a selected key's is its primary key's.
    pub(super) fn purged(&self) -> String {
        self.primary_name("purged")
    }

    /// The mark of the last purge of this key's resource: every variant.
    pub(super) fn resource_purged(&self) -> String {
        self.resource_name("purged")
    }

    /// A name of the key's resource, shared by every variant and method.
    fn resource_name(&self, suffix: &str) -> String {
        // The prefix up to the hash tag's end.
        let end = self.prefix.find("}:").map_or(self.prefix.len(), |i| i + 2);
        format!("{}{suffix}", &self.prefix[..end])
    }

    /// The presence mark of this key's resource: there while any of its
    /// answers is stored or any of its flights holds a lease.
    pub(super) fn live(&self) -> String {
        self.resource_name("live")
    }

    /// Adds the names a stored value is fenced and indexed by, in the order
    /// `STORE` and `COMPLETE` take them after their own: the key's purge
    /// mark, its resource's, the resource's presence mark, the primary
    /// key's variants index and the primary key's value.
    pub(super) fn stored_keys(&self, invocation: &mut ScriptInvocation<'_>) {
        invocation
            .key(self.purged())
            .key(self.resource_purged())
            .key(self.live())
            .key(self.index())
            .key(self.primary_value());
    }

    /// `script` with this key's lease, value and pass mark as `KEYS[1]`,
    /// `KEYS[2]` and `KEYS[3]`, the keys `TRY_LOCK` and `COMPLETE` take.
    pub(super) fn leased<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.key(self.lock());
        invocation.key(self.value()).key(self.pass());
        invocation
    }
}

fn hex(out: &mut String, bytes: &[u8]) {
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
}

/// The namespace's purge names, all under the `{purge}` hash tag (one slot):
/// the sequence, the log, the floor, and the purge channel (on a cluster,
/// a shard channel of that slot).
#[derive(Debug)]
pub(super) struct PurgeNames {
    pub(super) sequence: String,
    pub(super) log: String,
    pub(super) floor: String,
    pub(super) channel: String,
}

impl PurgeNames {
    pub(super) fn new(namespace: &str) -> Self {
        PurgeNames {
            sequence: format!("{namespace}:{LAYOUT}:{{purge}}:seq"),
            log: format!("{namespace}:{LAYOUT}:{{purge}}:log"),
            floor: format!("{namespace}:{LAYOUT}:{{purge}}:floor"),
            channel: format!("{namespace}:{LAYOUT}:{{purge}}:purges"),
        }
    }
}

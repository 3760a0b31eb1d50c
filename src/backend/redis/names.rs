//! The Redis names of a key, built in one place: see docs/protocol.md.

use crate::Key;
use std::fmt::Write as _;

/// Every name `RedisBackend` uses for one key:
/// `<namespace>:2:{<resource hash>}:<variant hash>:<suffix>`. The `2` is the
/// name layout's version: instances of a release with another layout share
/// no names with these. The resource hash is the cluster hash tag, so every
/// variant and method of one resource lives on one slot. The key is hashed
/// once for all of them: a key may be long.
pub(super) struct Names {
    pub(super) value: String,
    pub(super) lock: String,
    pub(super) pass: String,
    pub(super) done: String,
}

impl Names {
    pub(super) fn new(namespace: &str, key: &Key) -> Self {
        let mut prefix = String::with_capacity(namespace.len() + 72);
        prefix.push_str(namespace);
        prefix.push_str(":2:{");
        hex(&mut prefix, &key.resource_digest());
        prefix.push_str("}:");
        hex(&mut prefix, &key.variant_digest());
        prefix.push(':');
        let name = |suffix: &str| format!("{prefix}{suffix}");
        Names {
            value: name("v"),
            lock: name("lock"),
            pass: name("pass"),
            done: name("done"),
        }
    }
}

fn hex(out: &mut String, bytes: &[u8]) {
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
}

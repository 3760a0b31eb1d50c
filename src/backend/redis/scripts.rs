//! The Lua scripts `RedisBackend` runs: each touches the names of one key
//! only, all under one hash tag (one cluster slot), and each is one round
//! trip. `RedisBackend::connect` loads them.

use redis::Script;
use std::sync::LazyLock;

/// KEYS[1] value: the value and its remaining life in ms, or nil. One round
/// trip, and the near cache keeps the entry no longer than Redis does.
pub(super) static GET_FRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local v = redis.call('GET', KEYS[1])
          if not v then return false end
          return {v, redis.call('PTTL', KEYS[1])}",
    )
});

/// KEYS[1] lock, KEYS[2] value, KEYS[3] pass mark; ARGV[1] token, ARGV[2]
/// lease in ms. Returns 1 (acquired), 0 (held) or 2 (pass). The lease is
/// refused while an answer is stored: a flight that missed the value just
/// before another process completed must take that answer, not lead a second
/// call to the origin. While the key is marked pass-through, nobody leads it.
pub(super) static TRY_LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('EXISTS', KEYS[3]) == 1 then return 2 end
          if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
          if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
          return 0",
    )
});

/// KEYS[1] value; ARGV[1] the bytes read. Deletes a value that did not decode,
/// only if it is still those bytes (a fresh answer written since stays).
pub(super) static DROP_BAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
          return 0",
    )
});

/// KEYS[1] lock; ARGV[1] token, ARGV[2] lease in ms.
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('PEXPIRE', KEYS[1], ARGV[2])
          end
          return 0",
    )
});

/// KEYS[1] lock, KEYS[2] value, KEYS[3] pass mark; ARGV[1] token, ARGV[2]
/// encoded entry, ARGV[3] its TTL in ms (`0`: store nothing), ARGV[4] how
/// long to mark the key pass-through in ms (`0`: no mark), ARGV[5] done
/// channel, ARGV[6] the completion message.
pub(super) static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
          if ARGV[3] ~= '0' then
            redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
          end
          if ARGV[4] ~= '0' then
            redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
          end
          redis.call('DEL', KEYS[1])
          redis.call('PUBLISH', ARGV[5], ARGV[6])
          return 1",
    )
});

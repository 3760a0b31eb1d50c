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
/// lease in ms, ARGV[3] empty, or for a refresh the 8 bytes of the stale
/// value's stored time (bytes 7-14 of an encoded entry). Returns 1
/// (acquired), 0 (held) or 2 (pass); for a refresh refused because another
/// value is stored, `{3, value, its PTTL}`, so the near cache takes it in
/// the same round trip. The lease is refused while an answer is stored (but
/// for the stale one a refresh replaces): a flight that missed the value just
/// before another process completed must take that answer, not lead a second
/// call to the origin. While the key is marked pass-through, nobody leads it.
pub(super) static TRY_LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('EXISTS', KEYS[3]) == 1 then return 2 end
          if ARGV[3] == '' then
            if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
          else
            local v = redis.call('GET', KEYS[2])
            if v and string.sub(v, 8, 15) ~= ARGV[3] then
              return {3, v, redis.call('PTTL', KEYS[2])}
            end
          end
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
/// channel, ARGV[6] the completion message, ARGV[7] `1` to delete the stored
/// value (the key's answers cannot be shared: a stale one must not stay).
pub(super) static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
          if ARGV[3] ~= '0' then
            redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
          end
          if ARGV[4] ~= '0' then
            redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
          end
          if ARGV[7] == '1' then
            redis.call('DEL', KEYS[2])
          end
          redis.call('DEL', KEYS[1])
          redis.call('PUBLISH', ARGV[5], ARGV[6])
          return 1",
    )
});

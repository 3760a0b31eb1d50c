//! The Lua scripts `RedisBackend` runs: each touches the names of one key
//! only, all under one hash tag (one cluster slot), and each is one round
//! trip. `RedisBackend::connect` loads them.

use redis::Script;
use std::sync::LazyLock;

/// Purge positions as the scripts see them: `<epoch>:<position>` strings
/// (a bare number is epoch 0), ordered by epoch, then position. `after(a,
/// b)`: whether `a` comes later than `b`; a missing one (`false`) is the
/// start of epoch 0. Lua's numbers are doubles, exact to 2^53: epochs are
/// milliseconds since 1970 and positions counts, far below it.
const POSITIONS: &str = r"
local function pos(s)
  if not s then return 0, 0 end
  local c = string.find(s, ':', 1, true)
  if not c then return 0, tonumber(s) or 0 end
  return tonumber(string.sub(s, 1, c - 1)) or 0, tonumber(string.sub(s, c + 1)) or 0
end
local function after(a, b)
  local ae, ap = pos(a)
  local be, bp = pos(b)
  return ae > be or (ae == be and ap > bp)
end
";

/// A resource's presence mark (`…{r}:live`): it exists while any answer of
/// the resource is stored or any flight of it holds a lease, so that a write
/// to a resource with neither costs no purge record. `live(name, ms)`
/// makes it last at least `ms` more.
const LIVE: &str = r"
local function live(name, ms)
  if redis.call('PTTL', name) < tonumber(ms) then redis.call('SET', name, '1', 'PX', ms) end
end
";

/// The purge sequence (a hash: `e` its epoch, `p` its position), found lost
/// and started again in a new epoch when it is missing, or behind what the
/// caller saw: an older epoch, or the caller's epoch at a lower position (a
/// replica that lagged took over). KEYS[1] sequence, KEYS[2] log, KEYS[3]
/// floor; ARGV[n] the caller's epoch, ARGV[n+1] the latest position it saw
/// in it, ARGV[n+2] the epoch to start (later than any the caller saw).
/// Leaves `e` and `p` set.
fn sequence(n: usize) -> String {
    format!(
        r"local e = redis.call('HGET', KEYS[1], 'e')
          local p = tonumber(redis.call('HGET', KEYS[1], 'p') or '0')
          local mine = tonumber(ARGV[{n}])
          if not e or tonumber(e) < mine or (tonumber(e) == mine and p < tonumber(ARGV[{m}])) then
            e = ARGV[{o}]
            p = 0
            redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
            redis.call('HSET', KEYS[1], 'e', e, 'p', 0)
          end
",
        m = n + 1,
        o = n + 2
    )
}

/// A large value's pieces (see `pieces`): `drop_pieces(name, v)` deletes
/// the pieces of `v`, if it is a pointer written as the value named `name`
/// (a store that did not happen); `unpiece(name)` those of the value named
/// `name`, before it is replaced or deleted. A pointer is short: its first
/// 128 bytes are all of it, and no longer value is copied into the script.
const PIECES: &str = r"
local function drop_pieces(name, v)
  if v and string.sub(v, 1, 4) == 'TCR\1' then
    local id, count = string.match(string.sub(v, 16), '^(%x+):(%d+):')
    if id then
      for i = 0, tonumber(count) - 1 do redis.call('DEL', name .. ':p:' .. id .. ':' .. i) end
    end
  end
end
local function unpiece(name)
  drop_pieces(name, redis.call('GETRANGE', name, 0, 127))
end
";

/// A primary key's variants index (`…:vary`, see `Names::index`), kept as
/// a variant is stored: `variant(index, primary value, names, field, ms,
/// max)` records the variant whose value is named `field`, selected by the
/// headers `names`, as used last; an index of other names is replaced (its
/// variants, selected by headers the answers no longer vary on, go); past
/// `max` variants the least recently used goes; an answer stored under the
/// primary key itself goes; the index lasts at least `ms` more. With an
/// empty `field` (an answer stored under the primary key) it does nothing:
/// the caller deletes the index (in a `DEL` it makes anyway). Every name
/// touched shares the primary key's slot.
const VARIANT: &str = r"
local function variant(index, primary, names, field, ms, max)
  if field == '' then return end
  unpiece(primary)
  redis.call('DEL', primary)
  if redis.call('HGET', index, 'n') ~= names then
    for _, f in ipairs(redis.call('HKEYS', index)) do
      if f ~= 'n' and f ~= 'c' then
        unpiece(f)
        redis.call('DEL', f)
      end
    end
    redis.call('DEL', index)
    redis.call('HSET', index, 'n', names)
  end
  redis.call('HSET', index, field, redis.call('HINCRBY', index, 'c', 1))
  local all = redis.call('HGETALL', index)
  local count, oldest, least = 0, nil, nil
  for i = 1, #all, 2 do
    local f = all[i]
    if f ~= 'n' and f ~= 'c' then
      count = count + 1
      local used = tonumber(all[i + 1])
      if least == nil or used < least then oldest, least = f, used end
    end
  end
  if count > tonumber(max) then
    redis.call('HDEL', index, oldest)
    unpiece(oldest)
    redis.call('DEL', oldest)
  end
  if redis.call('PTTL', index) < tonumber(ms) then redis.call('PEXPIRE', index, ms) end
end
";

/// KEYS[1] value, KEYS[2] the primary key's variants index; ARGV[1] empty
/// for a primary key, else the value's name (its field in the index). The
/// value and its remaining life in ms (`{1, value, ms}`); with no value
/// under a primary key, its index's names and remaining life (`{2, names,
/// ms}`); or nil. A selected key's value found counts as a use of its
/// variant. One round trip, and the near cache keeps what it gets no
/// longer than Redis does.
pub(super) static GET_FRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local v = redis.call('GET', KEYS[1])
          if v then
            if ARGV[1] ~= '' and redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
              redis.call('HSET', KEYS[2], ARGV[1], redis.call('HINCRBY', KEYS[2], 'c', 1))
            end
            return {1, v, redis.call('PTTL', KEYS[1])}
          end
          if ARGV[1] == '' then
            local n = redis.call('HGET', KEYS[2], 'n')
            if n then return {2, n, redis.call('PTTL', KEYS[2])} end
          end
          return false",
    )
});

/// KEYS[1] lock, KEYS[2] value, KEYS[3] pass mark, KEYS[4] the resource's
/// presence mark (kept at least a lease when the lease is taken), KEYS[5]
/// the primary key's variants index; ARGV[1]
/// token, ARGV[2] lease in ms, ARGV[3] empty, or for a refresh the 8 bytes of the stale
/// value's stored time (bytes 7-14 of an encoded entry), ARGV[4] `1` for a
/// primary key. Returns 1
/// (acquired), 0 (held) or 2 (pass); for a refresh refused because another
/// value is stored, `{3, value, its PTTL}`, so the near cache takes it in
/// the same round trip. The lease is refused while an answer is stored (but
/// for the stale one a refresh replaces), or, on a primary key, its
/// variants index: a flight that missed the value just
/// before another process completed must take that answer, not lead a second
/// call to the origin. While the key is marked pass-through, nobody leads it.
/// A lease already held with this token is the caller's (an earlier attempt
/// of its whose reply was lost): acquired.
pub(super) static TRY_LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LIVE}
          if redis.call('EXISTS', KEYS[3]) == 1 then return 2 end
          if ARGV[3] == '' then
            if ARGV[4] == '1' then
              if redis.call('EXISTS', KEYS[2], KEYS[5]) > 0 then return 0 end
            elseif redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
          else
            if ARGV[4] == '1' and redis.call('EXISTS', KEYS[5]) == 1 then return 0 end
            local v = redis.call('GET', KEYS[2])
            if v and string.sub(v, 8, 15) ~= ARGV[3] then
              return {{3, v, redis.call('PTTL', KEYS[2])}}
            end
          end
          if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
             or redis.call('GET', KEYS[1]) == ARGV[1] then
            live(KEYS[4], ARGV[2])
            return 1
          end
          return 0"
    ))
});

/// KEYS[1] value; ARGV[1] the bytes read. Deletes a value that did not decode,
/// only if it is still those bytes (a fresh answer written since stays).
pub(super) static DROP_BAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{PIECES}
          if redis.call('GET', KEYS[1]) == ARGV[1] then
            drop_pieces(KEYS[1], ARGV[1])
            return redis.call('DEL', KEYS[1])
          end
          return 0"
    ))
});

/// KEYS[1] lock, KEYS[2] the resource's presence mark, KEYS[3] the key's
/// stream (kept as long as the lease, while it is the lease holder's);
/// ARGV[1] token, ARGV[2] lease in ms.
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LIVE}
          if redis.call('GET', KEYS[1]) == ARGV[1] then
            live(KEYS[2], ARGV[2])
            if redis.call('HGET', KEYS[3], 'k') == ARGV[1] then
              redis.call('PEXPIRE', KEYS[3], ARGV[2])
            end
            return redis.call('PEXPIRE', KEYS[1], ARGV[2])
          end
          return 0"
    ))
});

/// KEYS[1] lock, KEYS[2] value, KEYS[3] pass mark, KEYS[4] the key's purge
/// mark, KEYS[5] its resource's, KEYS[6] the resource's presence mark (kept
/// as long as the stored value); ARGV[1] token, ARGV[2] encoded entry,
/// ARGV[3] its TTL in ms (`0`: store nothing), ARGV[4] how long to mark the
/// key pass-through in ms (`0`: no mark), ARGV[5] done channel, ARGV[6] the
/// completion message, ARGV[7] `1` to delete the stored value (the key's
/// answers cannot be shared: a stale one must not stay), ARGV[8] the purge
/// position the entry's fill started at (`<epoch>:<position>`), ARGV[9] the command that publishes
/// (`PUBLISH`, or on a cluster `SPUBLISH`: the done channel shares the
/// key's slot); KEYS[7] the primary key's variants index, KEYS[8] the
/// primary key's value, ARGV[10] the names a selected key's variant is
/// selected by, ARGV[11] its value's name (empty for a primary key),
/// ARGV[12] the most variants kept (see `VARIANT`). Returns 0 (the lease was lost,
/// nothing changed), 1 (done), or 2 (done, but the entry was not stored: a
/// purge of the key or its resource came after its fill started).
pub(super) static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{POSITIONS}{LIVE}{PIECES}{VARIANT}
          if redis.call('GET', KEYS[1]) ~= ARGV[1] then
            drop_pieces(KEYS[2], ARGV[2])
            return 0
          end
          local done = 1
          if ARGV[3] ~= '0' then
            local filled = ARGV[8]
            if after(redis.call('GET', KEYS[4]), filled) or after(redis.call('GET', KEYS[5]), filled) then
              drop_pieces(KEYS[2], ARGV[2])
              done = 2
            else
              unpiece(KEYS[2])
              redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
              live(KEYS[6], ARGV[3])
              variant(KEYS[7], KEYS[8], ARGV[10], ARGV[11], ARGV[3], ARGV[12])
            end
          end
          if ARGV[4] ~= '0' then
            redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
          end
          if ARGV[7] == '1' then
            unpiece(KEYS[2])
            redis.call('DEL', KEYS[2])
          end
          if done == 1 and ARGV[3] ~= '0' and ARGV[11] == '' then
            redis.call('DEL', KEYS[1], KEYS[7])
          else
            redis.call('DEL', KEYS[1])
          end
          redis.call(ARGV[9], ARGV[5], ARGV[6])
          return done"
    ))
});

/// KEYS[1] value, KEYS[2] the key's purge mark, KEYS[3] its resource's,
/// KEYS[4] the resource's presence mark; ARGV[1] encoded entry, ARGV[2] its TTL in ms, ARGV[3] the purge position
/// its fill started at, ARGV[4] done channel, ARGV[5] the completion
/// message, ARGV[6] the command that publishes; KEYS[5], KEYS[6], ARGV[7],
/// ARGV[8], ARGV[9] as `COMPLETE`'s KEYS[7], KEYS[8], ARGV[10], ARGV[11],
/// ARGV[12]. Stores an answer made
/// without a lease — unless a purge of the key or its resource came after
/// its fill started (returns 2) — and announces it as `COMPLETE` would, so
/// that instances waiting on the key hear of it at once. Returns 1.
pub(super) static STORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{POSITIONS}{LIVE}{PIECES}{VARIANT}
          local filled = ARGV[3]
          if after(redis.call('GET', KEYS[2]), filled) or after(redis.call('GET', KEYS[3]), filled) then
            drop_pieces(KEYS[1], ARGV[1])
            return 2
          end
          unpiece(KEYS[1])
          redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
          live(KEYS[4], ARGV[2])
          if ARGV[8] == '' then
            redis.call('DEL', KEYS[5])
          else
            variant(KEYS[5], KEYS[6], ARGV[7], ARGV[8], ARGV[2], ARGV[9])
          end
          redis.call(ARGV[6], ARGV[4], ARGV[5])
          return 1"
    ))
});

/// KEYS[1] purge sequence, KEYS[2] purge log (a sorted set: each target's
/// last purge in the epoch, scored by position), KEYS[3] the floor (the
/// latest position the log forgot); ARGV[1] the target (17 bytes), ARGV[2]
/// the most records kept, ARGV[3] the purge channel, ARGV[4] the command
/// that publishes (`PUBLISH`, or `SPUBLISH` on a cluster), ARGV[5..7] as
/// [`sequence`] takes them. Takes the next position (in a new epoch if the
/// sequence was lost), records it, forgets the oldest records past the
/// bound (raising the floor), and publishes `<epoch>:<position>:<target>`.
/// Returns `{epoch, position}`.
pub(super) static PURGE_LOG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{}
          p = redis.call('HINCRBY', KEYS[1], 'p', 1)
          redis.call('ZADD', KEYS[2], p, ARGV[1])
          local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[2])
          if over > 0 then
            local oldest = redis.call('ZRANGE', KEYS[2], over - 1, over - 1, 'WITHSCORES')
            redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
            if tonumber(oldest[2]) > tonumber(redis.call('GET', KEYS[3]) or '0') then
              redis.call('SET', KEYS[3], oldest[2])
            end
          end
          redis.call(ARGV[4], ARGV[3], e .. ':' .. p .. ':' .. ARGV[1])
          return {{tonumber(e), p}}",
        sequence(5)
    ))
});

/// KEYS[1] the purge mark (a key's or a resource's), then for a key purge
/// KEYS[2] its value and KEYS[3] its lease; ARGV[1] the purge's position
/// (`<epoch>:<position>`), ARGV[2] how long the mark is kept, in ms. Marks
/// the purge, unless a later one is marked (so that `COMPLETE` stores no
/// answer whose fill started before it), and deletes the key's value and
/// lease (so that the old leader's completion fails its token check).
pub(super) static PURGE_KEY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{POSITIONS}{PIECES}
          if after(ARGV[1], redis.call('GET', KEYS[1])) then
            redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
          end
          if KEYS[2] then
            unpiece(KEYS[2])
            redis.call('DEL', KEYS[2], KEYS[3])
          end
          return 1"
    ))
});

/// KEYS[1] purge sequence, KEYS[2] purge log, KEYS[3] floor; ARGV[1] the
/// position above which records are wanted, ARGV[2..4] as [`sequence`]
/// takes them. Returns `{epoch, sequence, floor, {target, position, ...}}`:
/// with the records, every purge of the epoch up to `sequence` is known.
/// In another epoch than the caller's, every record of it is returned.
pub(super) static CATCH_UP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{}
          local since = ARGV[1]
          if tonumber(e) ~= mine then since = '0' end
          return {{tonumber(e), p,
                  tonumber(redis.call('GET', KEYS[3]) or '0'),
                  redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. since, '+inf', 'WITHSCORES')}}",
        sequence(2)
    ))
});

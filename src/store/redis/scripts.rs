//! The Lua scripts of the key store: each checks, writes and `PUBLISH`es in one atomic step.
//!
//! Every change is published twice on the invalidation channel: bare (`<hash>`, what replicas
//! of earlier releases read) and stamped `<hash>@<Redis time, ms>#<sequence>`, where the
//! sequence (`{p}:invseq`, incremented by the same script) lets every replica acknowledge what
//! it applied (see `super::replica`). Scripts run one at a time, so sequence order is publish
//! order. A successful write answers `ok:<sequence>`.

use std::sync::LazyLock;

use redis::Script;

/// Lua: `at`, the stamp `@<Redis ms>#<label><sequence n>` of a change (`label` is `ARGV[LABEL]`,
/// empty single-slot, `<shard>/` sharded).
macro_rules! stamp {
    ($label:literal) => {
        concat!(
            "local t = redis.call('TIME'); local at = '@' .. string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000)) .. '#' .. ARGV[",
            $label,
            "] .. string.format('%d', n)\n"
        )
    };
}

/// Single-slot: refuses once `{p}:layout` is set (the store is being or was sharded).
pub(super) static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        r"-- KEYS: rec, id, owner, ids, seq, invseq, layout; ARGV: json, hash, id, channel, label
        if redis.call('EXISTS', KEYS[7]) == 1 then return 'moved' end
        if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 'conflict' end
        redis.call('SET', KEYS[1], ARGV[1])
        redis.call('SET', KEYS[2], ARGV[2])
        redis.call('SADD', KEYS[3], ARGV[3])
        redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[5]), ARGV[3])
        local n = redis.call('INCR', KEYS[6])
        ",
        stamp!("5"),
        r"redis.call('PUBLISH', ARGV[4], ARGV[2]); redis.call('PUBLISH', ARGV[4], ARGV[2] .. at)
        return 'ok:' .. string.format('%d', n)"
    ))
});

/// Both layouts. Single-slot passes `{p}:layout` as the guard; sharded passes the record key
/// itself (no guard).
pub(super) static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        r"-- KEYS: rec, invseq, guard; ARGV: expected, updated, channel, hash, label
        if KEYS[3] ~= KEYS[1] and redis.call('EXISTS', KEYS[3]) == 1 then return 'moved' end
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'changed' end
        redis.call('SET', KEYS[1], ARGV[2])
        local n = redis.call('INCR', KEYS[2])
        ",
        stamp!("5"),
        r"redis.call('PUBLISH', ARGV[3], ARGV[4]); redis.call('PUBLISH', ARGV[3], ARGV[4] .. at)
        return 'ok:' .. string.format('%d', n)"
    ))
});

pub(super) static ROTATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        r"-- KEYS: old rec, new rec, new id, owner, ids, seq, invseq, layout
        -- ARGV: expected old, updated old, new json, new hash, new id, channel, old hash, label
        if redis.call('EXISTS', KEYS[8]) == 1 then return 'moved' end
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'changed' end
        if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then return 'conflict' end
        redis.call('SET', KEYS[1], ARGV[2])
        redis.call('SET', KEYS[2], ARGV[3])
        redis.call('SET', KEYS[3], ARGV[4])
        redis.call('SADD', KEYS[4], ARGV[5])
        redis.call('ZADD', KEYS[5], redis.call('INCR', KEYS[6]), ARGV[5])
        local n = redis.call('INCR', KEYS[7])
        ",
        stamp!("8"),
        r"redis.call('PUBLISH', ARGV[6], ARGV[7]); redis.call('PUBLISH', ARGV[6], ARGV[7] .. at)
        redis.call('PUBLISH', ARGV[6], ARGV[4]); redis.call('PUBLISH', ARGV[6], ARGV[4] .. at)
        return 'ok:' .. string.format('%d', n)"
    ))
});

/// Sharded: a record and its shard's owner-index and listing entries (members are lookup
/// hashes, listing scores Redis time in µs). The id index entry was claimed before.
pub(super) static S_INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        r"-- KEYS: rec, owner, ids, invseq; ARGV: json, hash, channel, label
        if redis.call('EXISTS', KEYS[1]) == 1 then return 'conflict' end
        redis.call('SET', KEYS[1], ARGV[1])
        redis.call('SADD', KEYS[2], ARGV[2])
        local now = redis.call('TIME')
        redis.call('ZADD', KEYS[3], string.format('%d', now[1]) .. string.format('%06d', now[2]), ARGV[2])
        local n = redis.call('INCR', KEYS[4])
        ",
        stamp!("4"),
        r"redis.call('PUBLISH', ARGV[3], ARGV[2]); redis.call('PUBLISH', ARGV[3], ARGV[2] .. at)
        return 'ok:' .. string.format('%d', n)"
    ))
});

/// Sharded: retires the old record and adds its successor (same shard) in one step.
pub(super) static S_ROTATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        r"-- KEYS: old rec, new rec, owner, ids, invseq
        -- ARGV: expected old, updated old, new json, new hash, channel, old hash, label
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'changed' end
        if redis.call('EXISTS', KEYS[2]) == 1 then return 'conflict' end
        redis.call('SET', KEYS[1], ARGV[2])
        redis.call('SET', KEYS[2], ARGV[3])
        redis.call('SADD', KEYS[3], ARGV[4])
        local now = redis.call('TIME')
        redis.call('ZADD', KEYS[4], string.format('%d', now[1]) .. string.format('%06d', now[2]), ARGV[4])
        local n = redis.call('INCR', KEYS[5])
        ",
        stamp!("7"),
        r"redis.call('PUBLISH', ARGV[5], ARGV[6]); redis.call('PUBLISH', ARGV[5], ARGV[6] .. at)
        redis.call('PUBLISH', ARGV[5], ARGV[4]); redis.call('PUBLISH', ARGV[5], ARGV[4] .. at)
        return 'ok:' .. string.format('%d', n)"
    ))
});

/// Sharded: claims a key id for a lookup hash (`new`; `mine` when this hash holds it already,
/// from an earlier attempt; `taken`).
pub(super) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: id; ARGV: hash
        local v = redis.call('GET', KEYS[1])
        if not v then redis.call('SET', KEYS[1], ARGV[1]); return 'new' end
        if v == ARGV[1] then return 'mine' end
        return 'taken'",
    )
});

/// Sharded: gives a claimed id back, if this hash still holds it.
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: id; ARGV: hash
        if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
        return 'ok'",
    )
});

/// Layout changes: `{p}:layout` goes from `ARGV[1]` ('' = absent) to `ARGV[2]` and is
/// announced, or (another migration got there first) the current value is returned.
pub(super) static SET_LAYOUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: layout; ARGV: expected, new, channel
        local cur = redis.call('GET', KEYS[1]) or ''
        if cur ~= ARGV[1] and cur ~= ARGV[2] then return cur end
        redis.call('SET', KEYS[1], ARGV[2]); redis.call('PUBLISH', ARGV[3], '*layout')
        return 'ok'",
    )
});

/// Migration, step 1: the record into its shard, keeping its place in the listing (unchanged
/// content, so nothing to publish). A record already there (moved by a writer) is left alone.
pub(super) static S_MOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: rec, owner, ids; ARGV: json, hash, score
        if redis.call('EXISTS', KEYS[1]) == 1 then return 'ok' end
        redis.call('SET', KEYS[1], ARGV[1])
        redis.call('SADD', KEYS[2], ARGV[2])
        redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
        return 'ok'",
    )
});

/// Migration, step 2: the single-slot copy goes (its sharded copy is in place), unless it
/// changed since it was copied (a writer of an earlier release): `changed`.
pub(super) static DROP_SINGLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: rec, id, owner, ids, used; ARGV: id, json as copied
        if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 'changed' end
        redis.call('DEL', KEYS[1], KEYS[2])
        redis.call('SREM', KEYS[3], ARGV[1]); redis.call('ZREM', KEYS[4], ARGV[1]); redis.call('HDEL', KEYS[5], ARGV[1])
        return 'ok'",
    )
});

/// Both layouts (guard as in [`UPDATE`]).
pub(super) static USAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: used, guard; ARGV: id, unix seconds, id, unix seconds, ...
        if KEYS[2] ~= KEYS[1] and redis.call('EXISTS', KEYS[2]) == 1 then return 'moved' end
        for i = 1, #ARGV, 2 do
          local cur = redis.call('HGET', KEYS[1], ARGV[i])
          if not cur or tonumber(cur) < tonumber(ARGV[i + 1]) then
            redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
          end
        end
        return 'ok'",
    )
});

/// A replica's heartbeat and acknowledgement, stamped with Redis's clock: the single-slot
/// sequence it applied (`applied`), each shard's (`<applied prefix><replica>`, a hash) and the
/// layout it serves (`layouts`).
pub(super) static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: replicas (zset), applied (hash), layouts (hash)
        -- ARGV: replica id, applied sequence, forget after ms, layout, applied prefix, shard, sequence, ...
        local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)
        redis.call('ZADD', KEYS[1], now, ARGV[1])
        local cur = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
        if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
        redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
        local mine = ARGV[5] .. ARGV[1]
        -- The replica's own view, which may go back (a sequence a failover rewound).
        for i = 6, #ARGV, 2 do redis.call('HSET', mine, ARGV[i], ARGV[i + 1]) end
        for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))) do
          redis.call('ZREM', KEYS[1], gone); redis.call('HDEL', KEYS[2], gone); redis.call('HDEL', KEYS[3], gone)
          redis.call('DEL', ARGV[5] .. gone)
        end
        return 'ok'",
    )
});

/// Who is serving, whether each reached the given sequences, and its layout:
/// `{now ms, id, last heartbeat ms, 1 | 0, layout, …}`.
pub(super) static ROLL_CALL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: replicas (zset), applied (hash), layouts (hash)
        -- ARGV: applied prefix, single-slot sequence, shard, sequence, ...
        local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)
        local out = {tostring(now)}
        local rows = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
        for i = 1, #rows, 2 do
          local id = rows[i]
          local ok = 1
          if tonumber(redis.call('HGET', KEYS[2], id) or '0') < tonumber(ARGV[2]) then ok = 0 end
          for j = 3, #ARGV, 2 do
            if tonumber(redis.call('HGET', ARGV[1] .. id, ARGV[j]) or '0') < tonumber(ARGV[j + 1]) then ok = 0 end
          end
          table.insert(out, id); table.insert(out, rows[i + 1]); table.insert(out, tostring(ok))
          table.insert(out, redis.call('HGET', KEYS[3], id) or '')
        end
        return out",
    )
});

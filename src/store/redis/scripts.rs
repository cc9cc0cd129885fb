//! The Lua scripts of the key store: each checks, writes and `PUBLISH`es in one atomic step.
//!
//! Every change is published twice on the invalidation channel: bare (`<hash>`, what replicas
//! of earlier releases read) and stamped `<hash>@<Redis time, ms>#<sequence>`, where the
//! sequence (`{p}:invseq`, incremented by the same script) lets every replica acknowledge what
//! it applied (see `super::replica`). Scripts run one at a time, so sequence order is publish
//! order. A successful write answers `ok:<sequence>`.

use std::sync::LazyLock;

use redis::Script;

pub(super) static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: rec, id, owner, ids, seq, invseq; ARGV: json, hash, id, channel
        if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 'conflict' end
        redis.call('SET', KEYS[1], ARGV[1])
        redis.call('SET', KEYS[2], ARGV[2])
        redis.call('SADD', KEYS[3], ARGV[3])
        redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[5]), ARGV[3])
        local n = redis.call('INCR', KEYS[6])
        local t = redis.call('TIME'); local at = '@' .. string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000)) .. '#' .. n
        redis.call('PUBLISH', ARGV[4], ARGV[2]); redis.call('PUBLISH', ARGV[4], ARGV[2] .. at)
        return 'ok:' .. n",
    )
});

pub(super) static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: rec, invseq; ARGV: expected, updated, channel, hash
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'changed' end
        redis.call('SET', KEYS[1], ARGV[2])
        local n = redis.call('INCR', KEYS[2])
        local t = redis.call('TIME'); local at = '@' .. string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000)) .. '#' .. n
        redis.call('PUBLISH', ARGV[3], ARGV[4]); redis.call('PUBLISH', ARGV[3], ARGV[4] .. at)
        return 'ok:' .. n",
    )
});

pub(super) static ROTATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: old rec, new rec, new id, owner, ids, seq, invseq
        -- ARGV: expected old, updated old, new json, new hash, new id, channel, old hash
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'changed' end
        if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then return 'conflict' end
        redis.call('SET', KEYS[1], ARGV[2])
        redis.call('SET', KEYS[2], ARGV[3])
        redis.call('SET', KEYS[3], ARGV[4])
        redis.call('SADD', KEYS[4], ARGV[5])
        redis.call('ZADD', KEYS[5], redis.call('INCR', KEYS[6]), ARGV[5])
        local n = redis.call('INCR', KEYS[7])
        local t = redis.call('TIME'); local at = '@' .. string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000)) .. '#' .. n
        redis.call('PUBLISH', ARGV[6], ARGV[7]); redis.call('PUBLISH', ARGV[6], ARGV[7] .. at)
        redis.call('PUBLISH', ARGV[6], ARGV[4]); redis.call('PUBLISH', ARGV[6], ARGV[4] .. at)
        return 'ok:' .. n",
    )
});

pub(super) static USAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: used; ARGV: id, unix seconds, id, unix seconds, ...
        for i = 1, #ARGV, 2 do
          local cur = redis.call('HGET', KEYS[1], ARGV[i])
          if not cur or tonumber(cur) < tonumber(ARGV[i + 1]) then
            redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
          end
        end
        return 'ok'",
    )
});

/// A replica's heartbeat and acknowledgement, stamped with Redis's clock.
pub(super) static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: replicas (zset), applied (hash); ARGV: replica id, applied sequence, forget after ms
        local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)
        redis.call('ZADD', KEYS[1], now, ARGV[1])
        local cur = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
        if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
        for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))) do
          redis.call('ZREM', KEYS[1], gone); redis.call('HDEL', KEYS[2], gone)
        end
        return 'ok'",
    )
});

/// Who is serving and what each applied: `{now ms, id, last heartbeat ms, applied, …}`.
pub(super) static ROLL_CALL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: replicas (zset), applied (hash)
        local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)
        local out = {tostring(now)}
        local rows = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
        for i = 1, #rows, 2 do
          table.insert(out, rows[i]); table.insert(out, rows[i + 1])
          table.insert(out, redis.call('HGET', KEYS[2], rows[i]) or '0')
        end
        return out",
    )
});

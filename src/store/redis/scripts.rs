//! The Lua scripts of the key store: each checks, writes and `PUBLISH`es in one atomic step.

use std::sync::LazyLock;

use redis::Script;

pub(super) static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: rec, id, owner, ids, seq; ARGV: json, hash, id, channel
        if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 'conflict' end
        redis.call('SET', KEYS[1], ARGV[1])
        redis.call('SET', KEYS[2], ARGV[2])
        redis.call('SADD', KEYS[3], ARGV[3])
        redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[5]), ARGV[3])
        local t = redis.call('TIME'); local at = '@' .. string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000))
        redis.call('PUBLISH', ARGV[4], ARGV[2]); redis.call('PUBLISH', ARGV[4], ARGV[2] .. at)
        return 'ok'",
    )
});

pub(super) static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: rec; ARGV: expected, updated, channel, hash
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'changed' end
        redis.call('SET', KEYS[1], ARGV[2])
        local t = redis.call('TIME'); local at = '@' .. string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000))
        redis.call('PUBLISH', ARGV[3], ARGV[4]); redis.call('PUBLISH', ARGV[3], ARGV[4] .. at)
        return 'ok'",
    )
});

pub(super) static ROTATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: old rec, new rec, new id, owner, ids, seq
        -- ARGV: expected old, updated old, new json, new hash, new id, channel, old hash
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'changed' end
        if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then return 'conflict' end
        redis.call('SET', KEYS[1], ARGV[2])
        redis.call('SET', KEYS[2], ARGV[3])
        redis.call('SET', KEYS[3], ARGV[4])
        redis.call('SADD', KEYS[4], ARGV[5])
        redis.call('ZADD', KEYS[5], redis.call('INCR', KEYS[6]), ARGV[5])
        local t = redis.call('TIME'); local at = '@' .. string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000))
        redis.call('PUBLISH', ARGV[6], ARGV[7]); redis.call('PUBLISH', ARGV[6], ARGV[7] .. at)
        redis.call('PUBLISH', ARGV[6], ARGV[4]); redis.call('PUBLISH', ARGV[6], ARGV[4] .. at)
        return 'ok'",
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

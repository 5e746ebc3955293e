"""The Redis store's Lua scripts: each one atomic step, safe to send again.

Kept apart as the declarative half of the stream store (`APPEND`, sent by
`gateway.stores.redis`; `END_LOST`, by `gateway.stores.redis_reads`) and of
`gateway.stores.redis_counters` (the limit counters). The stream scripts take
the keys of `gateway.stores.redis_keys.stream_keys`.
"""

__all__ = ["ACQUIRE", "APPEND", "END_LOST", "HIT"]

# KEYS: events, meta, lease, readers, cancel
# ARGV: first id, maxlen, instance, lease ms, terminal, retention ms, unfinished s, then
# each event's name and data (a terminal event comes alone). The events are stored
# under the ids from the first one on, all or none: a call sent again finds its first
# id stored and reports success, as does a call whose reply was lost.
# Returns the first id stored (or already stored by an earlier send of the same call),
# -1 when the stream is gone, -2 when it was ended for a lost generation, -3 on a gap.
APPEND = """
local meta = redis.call('HMGET', KEYS[2], 'last', 'finished')
if not meta[1] then return -1 end
local last, id = tonumber(meta[1]), tonumber(ARGV[1])
if meta[2] == 'lost' then return -2 end
if last >= id and ARGV[5] == '0' then return id end
if meta[2] == '1' then return last end
if last ~= id - 1 then
  if ARGV[5] == '0' then return -3 end
  id = last + 1
end
local n = (#ARGV - 7) / 2
for i = 0, n - 1 do
  local at = 8 + 2 * i
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], (id + i) .. '-0',
    'event', ARGV[at], 'data', ARGV[at + 1])
end
redis.call('HSET', KEYS[2], 'last', id + n - 1)
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[2], 'finished', '1')
  for i = 1, 5 do
    if i ~= 3 then redis.call('PEXPIRE', KEYS[i], ARGV[6]) end
  end
  redis.call('DEL', KEYS[3])
else
  if id == 1 then redis.call('EXPIRE', KEYS[1], ARGV[7]) end
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
end
return id
"""

# KEYS: events, meta, lease, readers, cancel; ARGV: data, maxlen, retention ms.
# Ends an unfinished stream whose lease is gone; returns its new last id, 0 if it
# was finished or leased after all, -1 when it is gone.
END_LOST = """
local meta = redis.call('HMGET', KEYS[2], 'last', 'finished')
if not meta[1] then return -1 end
if meta[2] ~= '0' or redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local id = tonumber(meta[1]) + 1
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], id .. '-0', 'event', 'error', 'data', ARGV[1])
redis.call('HSET', KEYS[2], 'last', id, 'finished', 'lost')
for i = 1, 5 do
  if i ~= 3 then redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
end
return id
"""

# Both scripts take the time from Redis, so instances with different clocks agree.
HIT = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

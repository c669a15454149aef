-- A failed webhook attempt: its next attempt (already scheduled by the claim, after a lease) is
-- moved to its backoff time, and a deliverer is woken to recompute how long it may sleep.
-- XX: only if it is still there (nothing is added back once removed).
-- KEYS: deliveries zset, wake list. ARGV: next attempt's member, seconds from now (Redis's clock).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local changed = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1])
redis.call('RPUSH', KEYS[2], 1)
redis.call('LTRIM', KEYS[2], -64, -1)
return changed

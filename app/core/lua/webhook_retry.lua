--! keys: deliveries wake
--! args: member delay
-- A failed webhook attempt: its next attempt (already scheduled by the claim, after a lease) is
-- moved to its backoff time, and a deliverer is woken to recompute how long it may sleep.
-- XX: only if it is still there (nothing is added back once removed).
-- A.member: the next attempt's member, A.delay: seconds from now (Redis's clock).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local changed = redis.call('ZADD', K.deliveries, 'XX', 'CH', now + tonumber(A.delay), A.member)
redis.call('RPUSH', K.wake, 1)
redis.call('LTRIM', K.wake, -64, -1)
return changed

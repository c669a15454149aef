--! keys: workers
-- The members of one registry set (all workers, or one model's) whose heartbeat has not expired;
-- the expired ones leave it on the way (register_worker.lua).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', K.workers, '-inf', now_ms)
return redis.call('ZRANGE', K.workers, 0, -1)

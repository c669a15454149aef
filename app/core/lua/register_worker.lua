--! keys: workers *serving
--! args: worker ttl_ms
-- A worker's heartbeat in the registry of live workers: it is a member of the set of all workers
-- and of the set of each model it serves, scored by the moment (Redis's clock, so that hosts whose
-- clocks differ agree) its heartbeat expires. Readers prune the expired members (live_workers.lua),
-- so the registry is read in O(workers), never by scanning the keyspace. The sets themselves expire
-- a while after their last heartbeat, so a fleet that is gone leaves no key behind.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl_ms = tonumber(A.ttl_ms)
local sets = {K.workers}
for _, key in ipairs(K.serving) do sets[#sets + 1] = key end
for _, key in ipairs(sets) do
  redis.call('ZADD', key, now_ms + ttl_ms, A.worker)
  redis.call('PEXPIRE', key, 10 * ttl_ms)
end
return now_ms + ttl_ms

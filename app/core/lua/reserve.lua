--! keys: request key_index reservations *queues
--! args: request_id key_id cost max_queue key_prefix ttl now
-- Queue-full check, then the credits taken from the key's balance, in one step. The request hash
-- records key_id and cost (for the refund that ends it if it fails) with A.ttl as its TTL, and the
-- id goes into the reservations index: the submission's enqueue takes it out as it writes the
-- request; one left there (the API died in between) is rolled back by the reaper (unreserve.lua).
-- Returns {0, queued} queue full, {1} disabled, {2, balance} short, {3, balance|false} ok, {4} twice.
local queued = 0
for _, queue in ipairs(K.queues) do queued = queued + redis.call('LLEN', queue) end
if queued >= tonumber(A.max_queue) then return {0, queued} end
if redis.call('HEXISTS', K.request, F.KEY_ID) == 1 then return {4} end
local cost = tonumber(A.cost)
local balance = false
local key_hash = redis.call('HGET', K.key_index, A.key_id)
if key_hash then
  local key = A.key_prefix .. key_hash
  if redis.call('HGET', key, KF.DISABLED) == '1' then return {1} end
  local credits = redis.call('HGET', key, KF.CREDITS)
  if credits then
    credits = tonumber(credits)
    if credits < cost then return {2, credits} end
    balance = redis.call('HINCRBY', key, KF.CREDITS, -cost)
  end
  -- credits spent (GET /v1/credits "used"), unlimited keys included; the refund takes it back
  redis.call('HINCRBY', key, KF.USED, cost)
end
redis.call('HSET', K.request, F.KEY_ID, A.key_id, F.COST, cost)
if tonumber(A.ttl) > 0 then redis.call('EXPIRE', K.request, A.ttl) end
join_line(K.request, A.request_id, A.now)  -- a key with a concurrency limit starts its requests in this order
redis.call('ZADD', K.reservations, A.now, A.request_id)
return {3, balance}

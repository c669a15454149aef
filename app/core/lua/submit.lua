--! keys: request key_index *queues
--! args: request_id key_id cost max_queue key_prefix ttl now idempotency_record layout blob
-- A submission in one step: the queue-full check, the credits taken from the key's balance, and
-- the request's writes (the request hash, its input image, the indexes, the Idempotency-Key
-- record's state and RQ's own enqueue: Queue.enqueue_call recorded on a pipeline that is never
-- executed, app/api/submission.py). One script, so there is no moment at which credits are taken
-- and the request not yet written: a process that dies before it took nothing, after it left a
-- queued request that was paid for.
-- A.layout, A.blob: the commands, packed by lua_scripts.pack_commands (none: the admission alone).
-- A.idempotency_record (a key name, or ''): the record must still name this request; it is
-- another submission's if its pending TTL ran out while this one stalled.
-- The request hash records key_id and cost (for the refund that ends it if it fails), A.ttl > 0
-- gives it a TTL.
-- Returns {0, queued} queue full, {1} disabled, {2, balance} short, {3, balance|false} queued,
-- {4} twice, {5} the Idempotency-Key record is no longer this request's. Only {3} writes anything.
-- First the request itself: a retry of this script whose first reply was lost must find it.
if redis.call('HEXISTS', K.request, F.KEY_ID) == 1 then return {4} end
if A.idempotency_record ~= '' and redis.call('HGET', A.idempotency_record, 'request_id') ~= A.request_id then
  return {5}
end
local queued = 0
for _, queue in ipairs(K.queues) do queued = queued + redis.call('LLEN', queue) end
if queued >= tonumber(A.max_queue) then return {0, queued} end
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
for _, command in ipairs(commands_in(A.layout, A.blob)) do redis.call(unpack(command)) end
return {3, balance}

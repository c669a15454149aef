--! keys: request processing queued events key_index
--! args: request_id worker now key_prefix
-- QUEUED -> PROCESSING, only if still QUEUED (a cancel or the queue-time limit may have won) and
-- not past its Cancel-After deadline (then the caller ends it: deadline.lua).
-- Its key's concurrency limit may make it wait: it is parked, in order, to be put back in its queue
-- when a slot frees (_concurrency.lua), never refused.
-- Returns 'OK', 'DEADLINE', 'PARKED', or the status that prevented it (false when the record is gone).
local status = redis.call('HGET', K.request, F.STATUS)
if status ~= ST.QUEUED then return status or false end
local deadline = redis.call('HGET', K.request, F.DEADLINE)
if deadline and tonumber(A.now) >= tonumber(deadline) then return 'DEADLINE' end
if not take_slot(K.request, A.request_id, A.now) then return 'PARKED' end
redis.call('HSET', K.request, F.STATUS, ST.PROCESSING, F.WORKER, A.worker, F.STARTED_AT, A.now,
  F.STEP, 0, F.TOTAL, 0)
redis.call('HINCRBY', K.request, F.ATTEMPTS, 1)
redis.call('ZADD', K.processing, A.now, A.request_id)
redis.call('ZREM', K.queued, A.request_id)
emit_event(K.events, K.request, 'status', 'status', ST.PROCESSING)
return 'OK'

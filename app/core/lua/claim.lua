--! keys: processing queue queued *requests
--! args: worker now events_prefix *ids
-- Batching: take more QUEUED requests off an RQ queue for a worker that has just started one, with
-- the same QUEUED -> PROCESSING transition as start.lua. A request is taken only while it is both
-- QUEUED (a cancel may have won) and still in the queue list (another worker may have popped it: its
-- own `start` then runs it), so no request is ever held by two workers.
-- K.requests and A.ids: one request hash and id per candidate (same order). Returns the ids taken.
local taken = {}
for i, request in ipairs(K.requests) do
  local id = A.ids[i]
  local deadline = tonumber(redis.call('HGET', request, F.DEADLINE) or 'inf')
  -- (one past its Cancel-After stays in the queue, to be ended there: it never runs)
  if redis.call('HGET', request, F.STATUS) == ST.QUEUED and tonumber(A.now) < deadline
     and redis.call('LREM', K.queue, 1, id) > 0 then
    redis.call('HSET', request, F.STATUS, ST.PROCESSING, F.WORKER, A.worker, F.STARTED_AT, A.now,
      F.STEP, 0, F.TOTAL, 0)
    redis.call('HINCRBY', request, F.ATTEMPTS, 1)
    redis.call('ZADD', K.processing, A.now, id)
    redis.call('ZREM', K.queued, id)
    emit_event(A.events_prefix .. id, request, 'status', 'status', ST.PROCESSING)
    taken[#taken + 1] = id
  end
end
return taken

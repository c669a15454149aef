--! keys: request heartbeat queue done input webhooks wake queued processing key_index rq_job events
--! args: request_id now ttl key_prefix max_attempts seen_worker hand_back
-- A PROCESSING request whose worker's heartbeat is gone: run it once more (back to the front of
-- its queue) or, past max attempts, end it FAILED "worker lost", refunded in this same step. The
-- worker that holds a request may also hand it back itself (A.hand_back = '1'): alive, but Redis
-- failed under its job. A.seen_worker: the worker the caller saw holding the request.
-- Returns 'ALIVE', 'GONE', 'REQUEUED' or 'FAILED'.
if A.hand_back ~= '1' and redis.call('EXISTS', K.heartbeat) == 1 then return 'ALIVE' end
local status = redis.call('HGET', K.request, F.STATUS)
-- Taken over by another worker since the caller looked: not this call's to act on.
if status == ST.PROCESSING and redis.call('HGET', K.request, F.WORKER) ~= A.seen_worker then return 'ALIVE' end
redis.call('ZREM', K.processing, A.request_id)
if status ~= ST.PROCESSING then return 'GONE' end
local attempts = tonumber(redis.call('HGET', K.request, F.ATTEMPTS) or '0')
if attempts < tonumber(A.max_attempts) and redis.call('EXISTS', K.rq_job) == 1
   and redis.call('EXISTS', K.input) == 1 then
  redis.call('HSET', K.request, F.STATUS, ST.QUEUED, F.WORKER, '', F.STEP, 0, F.TOTAL, 0)
  redis.call('HSET', K.rq_job, 'status', 'queued')
  redis.call('LPUSH', K.queue, A.request_id)
  redis.call('ZADD', K.queued, A.now, A.request_id)
  requeue_slot(K.request, A.request_id)
  emit_event(K.events, K.request, 'status', 'status', ST.QUEUED)
  return 'REQUEUED'
end
fail_request(E.WORKER_LOST, 500, A.now)
return 'FAILED'

--! keys: request queue done input webhooks wake queued processing key_index rq_job events
--! args: request_id now ttl key_prefix max_queue_time
-- A QUEUED request, checked once per stranded-after period (app/core/reaper.py):
-- - past SDXL_MAX_QUEUE_TIME_S since it was submitted (A.max_queue_time, 0: no limit), it leaves its
--   queue and ends FAILED "expired in queue", refunded;
-- - in no queue (a worker popped it, RQ's BLPOP or BLMOVE, and died before its `start` reached
--   Redis), it goes back to the front of its queue; without its RQ job or input (expired) it cannot
--   run again and ends FAILED "worker lost", refunded;
-- - still waiting in its queue, only its check time moves on.
-- Returns 'GONE' (not QUEUED any more), 'EXPIRED', 'WAITING', 'REQUEUED' or 'FAILED'.
if redis.call('HGET', K.request, F.STATUS) ~= ST.QUEUED then
  redis.call('ZREM', K.queued, A.request_id)
  return 'GONE'
end
local created = tonumber(redis.call('HGET', K.request, F.CREATED_AT) or '0')
local limit = tonumber(A.max_queue_time)
if limit > 0 and tonumber(A.now) - created >= limit then
  redis.call('LREM', K.queue, 0, A.request_id)
  fail_request(E.EXPIRED_IN_QUEUE, 500, A.now)
  return 'EXPIRED'
end
redis.call('ZADD', K.queued, A.now, A.request_id)
if redis.call('LPOS', K.queue, A.request_id) then return 'WAITING' end
-- parked by its key's concurrency limit: out of every queue on purpose, released by an end
if is_parked(K.request, A.request_id) then return 'WAITING' end
if redis.call('EXISTS', K.rq_job) == 1 and redis.call('EXISTS', K.input) == 1 then
  redis.call('HSET', K.rq_job, 'status', 'queued')
  redis.call('LPUSH', K.queue, A.request_id)
  return 'REQUEUED'
end
fail_request(E.WORKER_LOST, 500, A.now)
return 'FAILED'

-- What every end of a request does, in the same atomic step as its new status: write the status
-- fields, give the credits back when it FAILED (once), leave the queued and processing indexes,
-- keep its record and RQ's job hash for the result TTL only, drop its input image, wake a v1
-- waiter, and queue its webhook delivery when it has one (see app/core/webhooks.py). No process
-- can die between the end and the refund, and a webhook cannot be lost between the two.
-- The end is two entries of the request's event stream: its last status, then 'result'.
-- Needs K: request, done, input, webhooks, wake, queued, processing, key_index, rq_job, events;
-- A: request_id, ttl, key_prefix.
local function end_request(fields)
  redis.call('HSET', K.request, unpack(fields))
  redis.call('HDEL', K.request, F.CANCEL)
  if redis.call('HGET', K.request, F.STATUS) == ST.FAILED then refund(K.request) end
  free_slot(K.request, A.request_id)  -- its key's concurrency slot, to the oldest parked request
  redis.call('ZREM', K.processing, A.request_id)
  redis.call('ZREM', K.queued, A.request_id)
  local ttl = tonumber(A.ttl)
  redis.call('EXPIRE', K.request, ttl)
  redis.call('EXPIRE', K.rq_job, ttl)
  local idempotency = redis.call('HGET', K.request, F.IDEMPOTENCY)
  if idempotency then redis.call('EXPIRE', idempotency, ttl) end  -- its Idempotency-Key's record
  emit_event(K.events, K.request, 'status', 'status', redis.call('HGET', K.request, F.STATUS))
  emit_event(K.events, K.request, 'result')
  redis.call('DEL', K.input)
  redis.call('RPUSH', K.done, 1)
  redis.call('EXPIRE', K.done, ttl)
  if redis.call('HEXISTS', K.request, F.WEBHOOK) == 1 then
    local t = redis.call('TIME')
    redis.call('ZADD', K.webhooks, 'NX', tonumber(t[1]) + tonumber(t[2]) / 1000000, '0:' .. A.request_id)
    redis.call('RPUSH', K.wake, 1)
    redis.call('LTRIM', K.wake, -64, -1)
  end
end

local function fail_request(error, error_status, now)
  end_request({F.STATUS, ST.FAILED, F.ERROR, error, F.ERROR_STATUS, error_status, F.FINISHED_AT, now})
end

--! keys: request queue done input webhooks wake queued processing key_index rq_job events
--! args: request_id now ttl key_prefix
-- Cancel: a QUEUED request leaves its queue and ends FAILED "cancelled" at once, refunded in this
-- same step; a PROCESSING one is flagged: it stops at the worker's next denoising step, and
-- finish.lua will not complete it. A cancel retried after one that ended the request (its answer
-- lost, its process killed) answers as the first did.
-- Returns 'CANCELLED', 'REQUESTED', 'FINISHED' (ended otherwise) or 'MISSING'.
local status = redis.call('HGET', K.request, F.STATUS)
if not status then return 'MISSING' end
if status == ST.QUEUED then
  redis.call('LREM', K.queue, 0, A.request_id)
  fail_request(E.CANCELLED, 500, A.now)
  return 'CANCELLED'
end
if status == ST.PROCESSING then
  redis.call('HSET', K.request, F.CANCEL, 1)
  return 'REQUESTED'
end
if status == ST.FAILED and redis.call('HGET', K.request, F.ERROR) == E.CANCELLED then return 'CANCELLED' end
return 'FINISHED'

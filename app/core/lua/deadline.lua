--! keys: request queue done input webhooks wake queued processing key_index rq_job events deadlines
--! args: request_id now ttl key_prefix
-- A request whose Cancel-After deadline (F.DEADLINE) has come, found by the deadline sweep
-- (app/core/deadlines.py) or by a worker's start.lua: QUEUED, it leaves its queue and ends FAILED
-- "deadline exceeded", refunded, in this same step; PROCESSING, it is left to its worker, which
-- stops it at its next denoising step (progress.lua), and finish.lua will not complete it.
-- Returns 'EXCEEDED', 'RUNNING', 'EARLY' (not due yet: the deadline moved?) or 'GONE' (ended).
local status = redis.call('HGET', K.request, F.STATUS)
local deadline = tonumber(redis.call('HGET', K.request, F.DEADLINE) or 'inf')
if status == ST.PROCESSING then return 'RUNNING' end
redis.call('ZREM', K.deadlines, A.request_id)
if status ~= ST.QUEUED then return 'GONE' end
if tonumber(A.now) < deadline then return 'EARLY' end
redis.call('LREM', K.queue, 0, A.request_id)
fail_request(E.DEADLINE_EXCEEDED, 504, A.now)
return 'EXCEEDED'

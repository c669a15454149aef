--! keys: record
--! args: request_id digest ttl request_prefix
-- Idempotency-Key (CONTRACT 10): decides, in one step, whether a submission is the first with this
-- key for this API key. K.record: a hash {request_id, digest, state} (app/core/idempotency.py);
-- state 'created' once the request is written (by the submission's enqueue), absent while the first
-- submission is still under way (fetching its image). A record whose request has expired frees the
-- key: the next submission with it is a new request.
-- Returns {'NEW', id} (this submission goes on, with A.request_id), {'READY', id} (the first's
-- request exists), {'PENDING', id} (the first is still being submitted) or {'MISMATCH', id}.
local held = redis.call('HMGET', K.record, 'request_id', 'digest', 'state')
if held[1] then
  local exists = redis.call('HEXISTS', A.request_prefix .. held[1], F.STATUS) == 1
  if exists or held[3] ~= 'created' then
    if held[2] ~= A.digest then return {'MISMATCH', held[1]} end
    if exists then return {'READY', held[1]} end
    return {'PENDING', held[1]}
  end
end
redis.call('DEL', K.record)
redis.call('HSET', K.record, 'request_id', A.request_id, 'digest', A.digest)
redis.call('EXPIRE', K.record, A.ttl)
return {'NEW', A.request_id}

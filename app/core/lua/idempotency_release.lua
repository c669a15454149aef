--! keys: record request
--! args: request_id
-- A first submission that was refused before its request was written (bad image, credits, queue
-- full, Redis): its Idempotency-Key is free again, so that a retry is a new attempt. Not when the
-- request exists after all (submit.lua ran and its reply was lost), nor when the record is another
-- submission's. Returns 1 freed, 0 kept.
if redis.call('HGET', K.record, 'request_id') ~= A.request_id then return 0 end
if redis.call('HEXISTS', K.request, F.STATUS) == 1 then return 0 end
redis.call('DEL', K.record)
return 1

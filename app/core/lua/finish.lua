--! keys: request done input webhooks wake queued processing key_index rq_job events *outputs
--! args: request_id ttl key_prefix worker now fields *data
-- PROCESSING -> COMPLETED or FAILED, only by the worker that holds the request: one presumed lost
-- (whose request went to another) must not overwrite anything. A cancel accepted while the request
-- ran wins over a completion that comes after the last denoising step (VAE decode, encoding, or the
-- cancel of a v1 that was answered 504): the request ends FAILED "cancelled", refunded, and its
-- outputs are never stored. So does its Cancel-After deadline: a completion past it ends FAILED
-- "deadline exceeded", refunded (a request that has not ended by its deadline is cancelled).
-- A.fields: JSON object of the fields to write (text values); K.outputs / A.data: one output key
-- and its bytes each. Returns 'DONE', 'CANCELLED', 'DEADLINE' or 'NOT_HELD'.
if redis.call('HGET', K.request, F.STATUS) ~= ST.PROCESSING then return 'NOT_HELD' end
if redis.call('HGET', K.request, F.WORKER) ~= A.worker then return 'NOT_HELD' end
local fields = cjson.decode(A.fields)
if fields[F.STATUS] == ST.COMPLETED and redis.call('HEXISTS', K.request, F.CANCEL) == 1 then
  fail_request(E.CANCELLED, 500, A.now)
  return 'CANCELLED'
end
local deadline = tonumber(redis.call('HGET', K.request, F.DEADLINE) or 'inf')
if fields[F.STATUS] == ST.COMPLETED and tonumber(A.now) >= deadline then
  fail_request(E.DEADLINE_EXCEEDED, 504, A.now)
  return 'DEADLINE'
end
local flat = {}
for name, value in pairs(fields) do
  flat[#flat + 1] = name
  flat[#flat + 1] = value
end
for i, key in ipairs(K.outputs) do
  redis.call('SET', key, A.data[i], 'EX', tonumber(A.ttl))
end
end_request(flat)
return 'DONE'

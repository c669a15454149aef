--! keys: deliveries
--! args: claimed next delay attempts
-- A claimed webhook attempt that was not made (its host already has SDXL_WEBHOOK_PER_HOST in
-- flight) is put back as it was, due again after `delay`: not a failure, so the same attempt
-- number and no backoff. The claim had replaced it by its next attempt after a lease; that lease
-- is removed in the same step. When the lease is gone already (this process stalled past it and
-- another deliverer claimed the next attempt), nothing is put back: that attempt is someone
-- else's now. The last attempt has no lease (webhook_claim.lua), so it is always put back.
-- A.claimed: `<n>:<id>` as claimed, A.next: `<n+1>:<id>`, A.delay: seconds (Redis's clock),
-- A.attempts: attempts in all. Returns 1 when put back, 0 when not.
local sep = string.find(A.claimed, ':', 1, true)
local attempt = tonumber(string.sub(A.claimed, 1, sep - 1))
local leased = attempt + 1 < tonumber(A.attempts)
if leased and redis.call('ZREM', K.deliveries, A.next) == 0 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', K.deliveries, now + tonumber(A.delay), A.claimed)
return 1

--! keys: deliveries
--! args: most lease attempts
-- Claim the webhook deliveries that are due, atomically, so that two API replicas never make the
-- same attempt. Each claimed `<attempt>:<id>` is replaced by `<attempt+1>:<id>` due after a lease:
-- if the claiming process dies mid-POST, that next attempt comes due by itself. The deliverer
-- removes it on success, or moves it to its backoff time on failure. The last attempt has no next.
-- Times are Redis's clock (TIME), as in the scripts that add deliveries.
-- A.most: most to claim, A.lease: seconds, A.attempts: attempts in all.
-- Returns {claimed members, seconds until the next delivery is due (a string, "-1" when none)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = {}
if tonumber(A.most) > 0 then
  due = redis.call('ZRANGEBYSCORE', K.deliveries, '-inf', now, 'LIMIT', 0, tonumber(A.most))
end
for _, member in ipairs(due) do
  redis.call('ZREM', K.deliveries, member)
  local sep = string.find(member, ':', 1, true)
  local attempt = tonumber(string.sub(member, 1, sep - 1))
  if attempt + 1 < tonumber(A.attempts) then
    redis.call('ZADD', K.deliveries, now + tonumber(A.lease), (attempt + 1) .. ':' .. string.sub(member, sep + 1))
  end
end
local first = redis.call('ZRANGE', K.deliveries, 0, 0, 'WITHSCORES')
local wait = '-1'
if first[2] then wait = tostring(math.max(0, tonumber(first[2]) - now)) end
return {due, wait}

--! keys: key
--! args: rate_prefix count window_ms member
-- Authentication and rate limit in one step. A.count = '1': this call counts against the key's
-- rpm (a sliding log of submission times, Redis's clock); A.member: a unique log entry.
-- Returns {0} unknown, {1} disabled, {2, reset_ms, now_ms} rate limited, {3, <HGETALL...>} ok.
local h = redis.call('HGETALL', K.key)
if #h == 0 then return {0} end
local f = {}
for i = 1, #h, 2 do f[h[i]] = h[i + 1] end
if f[KF.DISABLED] == '1' then return {1} end
if A.count == '1' and f[KF.RPM] then
  local rpm = tonumber(f[KF.RPM])
  local window = tonumber(A.window_ms)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local log = A.rate_prefix .. f[KF.ID]
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  local n = redis.call('ZCARD', log)
  if n >= rpm then
    -- a slot frees when the (n - rpm + 1)-th oldest entry leaves the window
    local reset = now + window
    if n > 0 then
      local e = redis.call('ZRANGE', log, n - rpm, n - rpm, 'WITHSCORES')
      reset = tonumber(e[2]) + window
    end
    return {2, reset, now}
  end
  redis.call('ZADD', log, now, A.member)
  redis.call('PEXPIRE', log, window)
end
local out = {3}
for i = 1, #h do out[#out + 1] = h[i] end
return out

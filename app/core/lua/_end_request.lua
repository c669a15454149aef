-- What every end of a request does (finish, cancel, reap): keep its record for the result TTL,
-- drop its input image, wake a v1 waiter, and queue its webhook delivery when it has one — in the
-- same atomic step as the end, so a delivery cannot be lost between the two (see app/webhooks.py).
-- Put in front of the scripts that call it by app/lifecycle.py `script_text`.
local function end_request(request, done, input, webhooks, wake, request_id, ttl)
  redis.call('EXPIRE', request, ttl)
  redis.call('DEL', input)
  redis.call('RPUSH', done, 1)
  redis.call('EXPIRE', done, ttl)
  if redis.call('HEXISTS', request, 'webhook_url') == 1 then
    local t = redis.call('TIME')
    redis.call('ZADD', webhooks, 'NX', tonumber(t[1]) + tonumber(t[2]) / 1000000, '0:' .. request_id)
    redis.call('RPUSH', wake, 1)
    redis.call('LTRIM', wake, -64, -1)
  end
end


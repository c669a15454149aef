-- Cancel: a QUEUED request ends FAILED "cancelled" at once and leaves its queue; a PROCESSING one
-- is flagged and stops at the worker's next denoising step.
-- KEYS: request hash, rq queue list, done list, input image key, webhook deliveries zset, webhook
-- wake list. ARGV: request id, now, ttl, error text.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'MISSING' end
if status == 'QUEUED' then
  redis.call('HSET', KEYS[1], 'status', 'FAILED', 'error', ARGV[4], 'error_status', 500,
    'finished_at', ARGV[2])
  redis.call('LREM', KEYS[2], 0, ARGV[1])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
  redis.call('DEL', KEYS[4])
  redis.call('RPUSH', KEYS[3], 1)
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[3]))
  -- A request with a webhook_url gets its delivery queued in the same atomic step as its end, so it
  -- cannot be lost between the two (see app/webhooks.py).
  if redis.call('HEXISTS', KEYS[1], 'webhook_url') == 1 then
    local t = redis.call('TIME')
    redis.call('ZADD', KEYS[5], 'NX', tonumber(t[1]) + tonumber(t[2]) / 1000000, '0:' .. ARGV[1])
    redis.call('RPUSH', KEYS[6], 1)
    redis.call('LTRIM', KEYS[6], -64, -1)
  end
  return 'CANCELLED'
end
if status == 'PROCESSING' then
  redis.call('HSET', KEYS[1], 'cancel', 1)
  return 'REQUESTED'
end
return 'FINISHED'

-- Cancel: a QUEUED request ends FAILED "cancelled" at once and leaves its queue; a PROCESSING one
-- is flagged and stops at the worker's next denoising step.
-- KEYS: request hash, rq queue list, done list, input image key, webhook deliveries zset, webhook
-- wake list, queued index zset. ARGV: request id, now, ttl, error text.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'MISSING' end
if status == 'QUEUED' then
  redis.call('HSET', KEYS[1], 'status', 'FAILED', 'error', ARGV[4], 'error_status', 500,
    'finished_at', ARGV[2])
  redis.call('LREM', KEYS[2], 0, ARGV[1])
  redis.call('ZREM', KEYS[7], ARGV[1])
  end_request(KEYS[1], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[1], tonumber(ARGV[3]))
  return 'CANCELLED'
end
if status == 'PROCESSING' then
  redis.call('HSET', KEYS[1], 'cancel', 1)
  return 'REQUESTED'
end
return 'FINISHED'

-- A PROCESSING request whose worker's heartbeat is gone: run it once more (back to the front of
-- its queue) or, past max attempts, end it FAILED "worker lost". The worker that holds a request
-- may also hand it back itself (ARGV[7] = '1'): alive, but Redis failed under its job.
-- KEYS: request hash, processing zset, worker heartbeat key, rq queue list, rq job hash, done list,
-- input image key, webhook deliveries zset, webhook wake list, queued index zset. ARGV: request id, now, ttl, max
-- attempts, error text, the worker the caller saw holding the request, '1' for a hand back.
if ARGV[7] ~= '1' and redis.call('EXISTS', KEYS[3]) == 1 then return 'ALIVE' end
local status = redis.call('HGET', KEYS[1], 'status')
-- Taken over by another worker since the caller looked: not this call's to act on.
if status == 'PROCESSING' and redis.call('HGET', KEYS[1], 'worker') ~= ARGV[6] then return 'ALIVE' end
redis.call('ZREM', KEYS[2], ARGV[1])
if status ~= 'PROCESSING' then return 'GONE' end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if attempts < tonumber(ARGV[4]) and redis.call('EXISTS', KEYS[5]) == 1
   and redis.call('EXISTS', KEYS[7]) == 1 then
  redis.call('HSET', KEYS[1], 'status', 'QUEUED', 'worker', '', 'step', 0, 'total', 0)
  redis.call('HSET', KEYS[5], 'status', 'queued')
  redis.call('LPUSH', KEYS[4], ARGV[1])
  redis.call('ZADD', KEYS[10], ARGV[2], ARGV[1])
  return 'REQUEUED'
end
redis.call('HSET', KEYS[1], 'status', 'FAILED', 'error', ARGV[5], 'error_status', 500,
  'finished_at', ARGV[2])
end_request(KEYS[1], KEYS[6], KEYS[7], KEYS[8], KEYS[9], ARGV[1], tonumber(ARGV[3]))
return 'FAILED'

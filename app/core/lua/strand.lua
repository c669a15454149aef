-- A QUEUED request that is in no queue: a worker popped it (RQ's BLPOP or BLMOVE) and died before
-- its `start` reached Redis. Put it back at the front of its queue; a request still waiting in its
-- queue only has its check time moved on. Without its RQ job (expired) it cannot run again: it
-- ends FAILED "worker lost" (the caller refunds).
-- KEYS: request hash, rq queue list, rq job hash, queued index zset, done list, input image key,
-- webhook deliveries zset, webhook wake list. ARGV: request id, now, ttl, error text.
if redis.call('HGET', KEYS[1], 'status') ~= 'QUEUED' then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 'GONE'
end
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
if redis.call('LPOS', KEYS[2], ARGV[1]) then return 'WAITING' end
if redis.call('EXISTS', KEYS[3]) == 1 and redis.call('EXISTS', KEYS[6]) == 1 then
  redis.call('HSET', KEYS[3], 'status', 'queued')
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 'REQUEUED'
end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'FAILED', 'error', ARGV[4], 'error_status', 500,
  'finished_at', ARGV[2])
end_request(KEYS[1], KEYS[5], KEYS[6], KEYS[7], KEYS[8], ARGV[1], tonumber(ARGV[3]))
return 'FAILED'

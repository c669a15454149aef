-- QUEUED -> PROCESSING, only if still QUEUED (a cancel may have won the race).
-- KEYS: request hash, processing zset, queued index zset. ARGV: request id, worker id, now.
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'QUEUED' then return status or false end
redis.call('HSET', KEYS[1], 'status', 'PROCESSING', 'worker', ARGV[2], 'started_at', ARGV[3],
  'step', 0, 'total', 0)
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 'OK'

-- Batching: take more QUEUED requests off an RQ queue for a worker that has just started one, with
-- the same QUEUED -> PROCESSING transition as start.lua. A request is taken only while it is both
-- QUEUED (a cancel may have won) and still in the queue list (another worker may have popped it: its
-- own `start` then runs it), so no request is ever held by two workers.
-- KEYS: processing zset, rq queue list, queued index zset, then one request hash per candidate.
-- ARGV: worker id, now, then one request id per candidate (same order). Returns the ids taken.
local taken = {}
for i = 4, #KEYS do
  local id = ARGV[i - 1]
  if redis.call('HGET', KEYS[i], 'status') == 'QUEUED' and redis.call('LREM', KEYS[2], 1, id) > 0 then
    redis.call('HSET', KEYS[i], 'status', 'PROCESSING', 'worker', ARGV[1], 'started_at', ARGV[2],
      'step', 0, 'total', 0)
    redis.call('HINCRBY', KEYS[i], 'attempts', 1)
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    redis.call('ZREM', KEYS[3], id)
    taken[#taken + 1] = id
  end
end
return taken

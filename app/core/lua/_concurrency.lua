-- Per-key concurrency (CONTRACT 10, `keys create --concurrency N`): at most N of a key's requests
-- PROCESSING at once, across every worker. Three sorted sets per limited key, named after its hash
-- (`<key hash key>:running|parked|released`), each expiring with the longest-lived of its requests:
-- - running: its PROCESSING requests (score: start time);
-- - parked: QUEUED requests a worker popped while the key was at its limit (score: submission
--   time), out of every queue; they wait there, in order, never refused;
-- - released: parked requests put back at the front of their queue because a slot came free,
--   holding that slot until they start.
-- A request may start when running + released (others) < N and no parked request is older. Each
-- end frees a slot and releases the oldest parked ones into the free slots.
-- Needs K.key_index and A.key_prefix (as refund does); the request's queue key is its F.QUEUE.

local function key_slots(request)
  local key_id = redis.call('HGET', request, F.KEY_ID)
  if not key_id then return nil end
  local key_hash = redis.call('HGET', K.key_index, key_id)
  if not key_hash then return nil end
  local key = A.key_prefix .. key_hash
  local limit = redis.call('HGET', key, KF.CONCURRENCY)
  if not limit then return nil end
  return {limit = tonumber(limit), running = key .. ':running', parked = key .. ':parked',
    released = key .. ':released'}
end

local function outlive(set, request)
  local ttl = redis.call('TTL', request)
  if ttl > redis.call('TTL', set) then redis.call('EXPIRE', set, ttl) end
end

-- the request hash's key of another request id, from this script's own (same prefix)
local function request_key(request, request_id, other_id)
  return string.sub(request, 1, #request - #request_id) .. other_id
end

local function release_next(slots, request, request_id)
  while redis.call('ZCARD', slots.running) + redis.call('ZCARD', slots.released) < slots.limit do
    local oldest = redis.call('ZRANGE', slots.parked, 0, 0, 'WITHSCORES')
    if not oldest[1] then return end
    local id = oldest[1]
    redis.call('ZREM', slots.parked, id)
    local other = request_key(request, request_id, id)
    local queue = redis.call('HGET', other, F.QUEUE)
    if queue and redis.call('HGET', other, F.STATUS) == ST.QUEUED and redis.call('EXISTS', 'rq:job:' .. id) == 1 then
      redis.call('HSET', 'rq:job:' .. id, 'status', 'queued')
      redis.call('LPUSH', queue, id)
      redis.call('ZADD', slots.released, oldest[2], id)
      outlive(slots.released, other)
    end
  end
end

-- start.lua: true when the request may start now (it then holds a running slot), false when it
-- was parked instead.
local function take_slot(request, request_id, now)
  local slots = key_slots(request)
  if not slots then return true end
  redis.call('ZREM', slots.released, request_id)
  local created = tonumber(redis.call('HGET', request, F.CREATED_AT) or '0')
  local oldest = redis.call('ZRANGE', slots.parked, 0, 0, 'WITHSCORES')
  local ahead = oldest[1] and oldest[1] ~= request_id and tonumber(oldest[2]) < created
  local taken = redis.call('ZCARD', slots.running) + redis.call('ZCARD', slots.released)
  if ahead or taken >= slots.limit then
    redis.call('ZADD', slots.parked, created, request_id)
    outlive(slots.parked, request)
    release_next(slots, request, request_id)  -- the older parked ones, when slots are free
    return false
  end
  redis.call('ZREM', slots.parked, request_id)
  redis.call('ZADD', slots.running, now, request_id)
  outlive(slots.running, request)
  return true
end

-- end_request: the request leaves every set, and its slot goes to the oldest parked.
local function free_slot(request, request_id)
  local slots = key_slots(request)
  if not slots then return end
  redis.call('ZREM', slots.running, request_id)
  redis.call('ZREM', slots.parked, request_id)
  redis.call('ZREM', slots.released, request_id)
  release_next(slots, request, request_id)
end

-- reap.lua: a PROCESSING request put back at the front of its queue keeps its slot until it starts.
local function requeue_slot(request, request_id)
  local slots = key_slots(request)
  if not slots then return end
  redis.call('ZREM', slots.running, request_id)
  redis.call('ZADD', slots.released, tonumber(redis.call('HGET', request, F.CREATED_AT) or '0'), request_id)
  outlive(slots.released, request)
end

-- strand.lua: a parked request is in no queue on purpose.
local function is_parked(request, request_id)
  local slots = key_slots(request)
  return slots ~= nil and redis.call('ZSCORE', slots.parked, request_id) ~= false
end

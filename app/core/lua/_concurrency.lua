-- Per-key concurrency (CONTRACT 10, `keys create --concurrency N`): at most N of a key's requests
-- PROCESSING at once, across every worker, started in the order they were submitted. Three sorted
-- sets per limited key, named after its hash (`<key hash key>:running|waiting|parked`), each
-- expiring with the longest-lived of its requests:
-- - running: its PROCESSING requests (score: start time);
-- - waiting: its QUEUED requests (score: submission time), from the submission that admits one (or
--   the reaper's requeue) to its start or end; their order is the order they may start in;
-- - parked: the waiting requests a worker popped before their turn, out of every queue; they wait
--   there, never refused, until an end makes it their turn and puts them back at the front of
--   their queue.
-- A request's turn: running + (waiting requests ahead of it) < N. Only ends make turns come (a
-- start moves one request from waiting to running, a requeue one from running to waiting, ahead
-- of the others: neither changes anyone's sum), so each end releases the parked requests whose
-- turn it is. Deciding by the waiting order, not by who pops first, keeps two workers that pop
-- two of the key's requests at once from starting the younger first.
-- A key's requests start in order across all the models they ask for: one waiting in the queue of
-- a model nobody serves holds one of the key's N slots until it expires in queue.
-- Needs K.key_index and A.key_prefix (as refund does); the request's queue key is its F.QUEUE.

local function key_slots(request)
  local key_id = redis.call('HGET', request, F.KEY_ID)
  if not key_id then return nil end
  local key_hash = redis.call('HGET', K.key_index, key_id)
  if not key_hash then return nil end
  local key = A.key_prefix .. key_hash
  local limit = redis.call('HGET', key, KF.CONCURRENCY)
  if not limit then return nil end
  return {limit = tonumber(limit), running = key .. ':running', waiting = key .. ':waiting',
    parked = key .. ':parked'}
end

local function outlive(set, request)
  local ttl = redis.call('TTL', request)
  if ttl > 0 and ttl > redis.call('TTL', set) then redis.call('EXPIRE', set, ttl) end
end

-- the request hash's key of another request id, from this script's own (same prefix)
local function request_key(request, request_id, other_id)
  return string.sub(request, 1, #request - #request_id) .. other_id
end

local function wait_in_line(slots, request, request_id, score)
  redis.call('ZADD', slots.waiting, 'NX', score, request_id)
  outlive(slots.waiting, request)
end

-- the parked requests whose turn it now is go back to the front of their queue
local function release_turns(slots, request, request_id)
  local free = slots.limit - redis.call('ZCARD', slots.running)
  if free <= 0 then return end
  for _, id in ipairs(redis.call('ZRANGE', slots.waiting, 0, free - 1)) do
    if redis.call('ZREM', slots.parked, id) == 1 then
      local other = request_key(request, request_id, id)
      local queue = redis.call('HGET', other, F.QUEUE)
      if queue and redis.call('HGET', other, F.STATUS) == ST.QUEUED and redis.call('EXISTS', 'rq:job:' .. id) == 1 then
        redis.call('HSET', 'rq:job:' .. id, 'status', 'queued')
        redis.call('LPUSH', queue, id)
      else
        redis.call('ZREM', slots.waiting, id)  -- ended or gone without an end step: not a turn holder
      end
    end
  end
end

-- submit.lua: an admitted request of a limited key takes its place in line.
local function join_line(request, request_id, now)
  local slots = key_slots(request)
  if slots then wait_in_line(slots, request, request_id, tonumber(now)) end
end

-- start.lua: true when it is the request's turn (it then holds a running slot), false when it
-- was parked instead.
local function take_slot(request, request_id, now)
  local slots = key_slots(request)
  if not slots then return true end
  wait_in_line(slots, request, request_id, tonumber(redis.call('HGET', request, F.CREATED_AT) or now))
  local ahead = redis.call('ZRANK', slots.waiting, request_id)
  if redis.call('ZCARD', slots.running) + ahead >= slots.limit then
    redis.call('ZADD', slots.parked, 0, request_id)
    outlive(slots.parked, request)
    return false
  end
  redis.call('ZREM', slots.waiting, request_id)
  redis.call('ZREM', slots.parked, request_id)
  redis.call('ZADD', slots.running, now, request_id)
  outlive(slots.running, request)
  return true
end

-- end_request: the request leaves every set, and the turns it held or waited ahead of come.
local function free_slot(request, request_id)
  local slots = key_slots(request)
  if not slots then return end
  redis.call('ZREM', slots.running, request_id)
  redis.call('ZREM', slots.waiting, request_id)
  redis.call('ZREM', slots.parked, request_id)
  release_turns(slots, request, request_id)
end

-- reap.lua: a PROCESSING request put back at the front of its queue goes back in line where it
-- was (by its submission time), ahead of the key's younger requests.
local function requeue_slot(request, request_id)
  local slots = key_slots(request)
  if not slots then return end
  redis.call('ZREM', slots.running, request_id)
  wait_in_line(slots, request, request_id, tonumber(redis.call('HGET', request, F.CREATED_AT) or '0'))
end

-- strand.lua: a parked request is in no queue on purpose.
local function is_parked(request, request_id)
  local slots = key_slots(request)
  return slots ~= nil and redis.call('ZSCORE', slots.parked, request_id) ~= false
end

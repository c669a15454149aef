-- Gives a request's cost back to its key, exactly once (the `refunded` field guards it). Called by
-- the step that ends a request FAILED (end_request), so the end and the refund are one atomic step.
-- Needs K.key_index (key id -> key hash) and A.key_prefix (the key hashes' prefix).
-- Returns the key's balance, or false when it has none (unlimited or unknown key).
local function refund(request)
  local key_id = redis.call('HGET', request, F.KEY_ID)
  if not key_id then return false end
  local first = redis.call('HSETNX', request, F.REFUNDED, '1')
  local key_hash = redis.call('HGET', K.key_index, key_id)
  if not key_hash then return false end
  local key = A.key_prefix .. key_hash
  local cost = tonumber(redis.call('HGET', request, F.COST) or '0')
  -- "used" counts credits spent: a refunded request spent none (never below 0: keys made before
  -- the count existed)
  if first == 1 and cost > 0 and tonumber(redis.call('HGET', key, KF.USED) or '0') >= cost then
    redis.call('HINCRBY', key, KF.USED, -cost)
  end
  local credits = redis.call('HGET', key, KF.CREDITS)
  if not credits then return false end
  if first == 1 and cost > 0 then credits = redis.call('HINCRBY', key, KF.CREDITS, cost) end
  return credits
end

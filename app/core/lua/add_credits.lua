--! keys: key
--! args: amount
-- Adds to a balance only if the key has one: HINCRBY on a missing field would turn an unlimited
-- key into one with a small balance. Returns {-1} unknown key, {-2} unlimited, {1, balance}.
if redis.call('EXISTS', K.key) == 0 then return {-1} end
if redis.call('HEXISTS', K.key, KF.CREDITS) == 0 then return {-2} end
return {1, redis.call('HINCRBY', K.key, KF.CREDITS, A.amount)}

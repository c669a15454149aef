--! keys: key index
--! args: id hash *fields
-- A new API key: its hash and its id in the index, unless the key or the id exists already.
-- Returns 1 created, 0 the key exists, -1 the id is taken (draw another).
if redis.call('EXISTS', K.key) == 1 then return 0 end
if redis.call('HEXISTS', K.index, A.id) == 1 then return -1 end
redis.call('HSET', K.key, unpack(A.fields))
redis.call('HSET', K.index, A.id, A.hash)
return 1

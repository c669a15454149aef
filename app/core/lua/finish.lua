-- PROCESSING -> COMPLETED or FAILED, only by the worker that holds the request: a worker that was
-- presumed lost (and whose request was handed to another) must not overwrite anything.
-- KEYS: request hash, processing zset, done list, input image key, webhook deliveries zset, webhook
-- wake list, then one key per output.
-- ARGV: request id, worker id, ttl, field/value count n, n*2 field-values, then one value per output key.
if redis.call('HGET', KEYS[1], 'status') ~= 'PROCESSING' then return 0 end
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] then return 0 end
local ttl = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  redis.call('HSET', KEYS[1], ARGV[5 + 2 * i], ARGV[6 + 2 * i])
end
local first_output_value = 5 + 2 * n
for k = 7, #KEYS do
  redis.call('SET', KEYS[k], ARGV[first_output_value + k - 7], 'EX', ttl)
end
redis.call('HDEL', KEYS[1], 'cancel')
redis.call('ZREM', KEYS[2], ARGV[1])
end_request(KEYS[1], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[1], ttl)
return 1

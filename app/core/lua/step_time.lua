--! keys: step_times
--! args: field seconds weight ttl
-- One measured seconds-per-denoising-step-per-image, folded into the model and size bucket's moving
-- average (EWMA: new = old + weight * (sample - old); the first sample is taken as it is), in one
-- step so that workers finishing at the same moment never lose each other's sample.
local old = tonumber(redis.call('HGET', K.step_times, A.field))
local sample = tonumber(A.seconds)
local new = sample
if old then new = old + tonumber(A.weight) * (sample - old) end
redis.call('HSET', K.step_times, A.field, tostring(new))
redis.call('EXPIRE', K.step_times, tonumber(A.ttl))
return tostring(new)

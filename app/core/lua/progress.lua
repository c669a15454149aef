--! keys: *requests
--! args: worker step total now events_prefix *ids
-- One denoising step of a batch: progress written (and put on each request's event stream), and
-- for each request whether the worker must stop: 1 cancelled, 2 not its own any more (presumed lost
-- while frozen, taken over since; its progress must not overwrite the new run's), 3 past its
-- Cancel-After deadline (A.now: the worker's clock, as at submission), 0 run on.
-- A.step = '' only reads the flags. A.ids: the request ids, in the order of K.requests.
local out = {}
for i, request in ipairs(K.requests) do
  if redis.call('HGET', request, F.STATUS) ~= ST.PROCESSING
     or redis.call('HGET', request, F.WORKER) ~= A.worker then
    out[i] = 2
  else
    if A.step ~= '' then
      redis.call('HSET', request, F.STEP, A.step, F.TOTAL, A.total)
      -- the ETA's pace is taken from here on: what comes before step 1 (text and image encoding)
      -- is paid once, not once per step
      if A.step == '1' then redis.call('HSET', request, F.FIRST_STEP_AT, A.now) end
      emit_event(A.events_prefix .. A.ids[i], request, 'progress', 'step', A.step, 'total', A.total)
    end
    local deadline = tonumber(redis.call('HGET', request, F.DEADLINE) or 'inf')
    if redis.call('HEXISTS', request, F.CANCEL) == 1 then out[i] = 1
    elseif tonumber(A.now) >= deadline then out[i] = 3
    else out[i] = 0 end
  end
end
return out

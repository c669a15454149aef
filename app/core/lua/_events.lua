-- Live status (GET /v2/requests/{id}/events and status?wait=, app/core/status_events.py): every
-- change of a request is one entry of its Redis Stream, written in the same step as the change, so
-- the API's blocking XREAD wakes on the change itself. The stream lives exactly as long as the
-- request's hash: its TTL is copied at each write.
local function emit_event(events, request, kind, ...)
  redis.call('XADD', events, '*', 'kind', kind, ...)
  local ttl = redis.call('PTTL', request)
  if ttl > 0 then redis.call('PEXPIRE', events, ttl) end
end

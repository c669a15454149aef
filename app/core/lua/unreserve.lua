--! keys: request key_index reservations
--! args: request_id key_prefix
-- A reservation whose request was never written (the API died, or Redis failed, between reserve
-- and enqueue): the credits go back and the half-written hash goes. The enqueue (enqueue.lua)
-- checks the hash in the step that writes, so a late enqueue after this writes nothing instead of
-- running a request nobody paid for.
-- Returns 'KEPT' (the request exists: nothing to undo) or 'ROLLED_BACK'.
redis.call('ZREM', K.reservations, A.request_id)
if redis.call('HEXISTS', K.request, F.STATUS) == 1 then return 'KEPT' end
refund(K.request)
leave_line(K.request, A.request_id)
redis.call('DEL', K.request)
return 'ROLLED_BACK'

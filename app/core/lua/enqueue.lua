--! keys: request *idempotency_record
--! args: request_id layout blob
-- The submission's writes, committed in one step only while its reservation still holds: the
-- request hash, its input image, the indexes, the Idempotency-Key record's state and RQ's own
-- enqueue (Queue.enqueue_call recorded on a pipeline that is never executed, app/api/submission.py).
-- Being one script, the check and the writes cannot interleave with the reaper's roll back
-- (unreserve.lua): a late enqueue after a roll back writes nothing instead of running a request
-- nobody paid for.
-- A.layout, A.blob: the commands, packed by lua_scripts.pack_commands.
-- K.idempotency_record (none, or one): the record must still name this request; it is another
-- submission's if its pending TTL ran out while this one stalled.
-- Returns 'QUEUED', or 'LOST' (nothing written).
if redis.call('HEXISTS', K.request, F.KEY_ID) == 0 then return 'LOST' end
for _, record in ipairs(K.idempotency_record) do
  if redis.call('HGET', record, 'request_id') ~= A.request_id then return 'LOST' end
end
for _, command in ipairs(commands_in(A.layout, A.blob)) do redis.call(unpack(command)) end
return 'QUEUED'

--! keys: request key_index
--! args: key_prefix
-- A request's cost back to its key, once (see _refund.lua). Requests that end are refunded by
-- end_request itself; this stands alone for the tests and tools that check the guard.
-- Returns {0} no balance to refund to, {1, balance} (refunded now or earlier).
local balance = refund(K.request)
if balance then return {1, balance} end
return {0}

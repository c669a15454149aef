-- Commands packed by app/core/lua_scripts.py pack_commands: `layout` (per command its argument
-- count, then each argument's length) and `blob` (the arguments, joined). Returns a list of
-- commands, each a list of its arguments, ready for redis.call(unpack(command)).
local function commands_in(layout, blob)
  local numbers = {}
  for number in string.gmatch(layout, '%d+') do numbers[#numbers + 1] = tonumber(number) end
  local commands, at, i = {}, 1, 1
  while i <= #numbers do
    local command = {}
    for j = 1, numbers[i] do
      command[j] = string.sub(blob, at, at + numbers[i + j] - 1)
      at = at + numbers[i + j]
    end
    commands[#commands + 1] = command
    i = i + numbers[i] + 1
  end
  return commands
end

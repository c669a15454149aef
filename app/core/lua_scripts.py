"""The Lua layer, one way: every script is a file in `app/core/lua/`, called by name with its keys
and arguments by name, sent as one EVALSHA (see Calls below).

A script file declares what it takes in its first lines:

    --! keys: request queue done *outputs
    --! args: request_id now *values

and reads them as `K.request`, `A.now`, ...; a name written `*name` (last only) takes the rest, as
a Lua list. In front of every script comes a prelude, generated here, with those tables and with
the field names shared with Python from one table each: `F` (the request hash, `RequestField`),
`KF` (an API key's hash, `KeyField`), `ST` (the statuses) and `E` (the error texts a request can
end with). Library files (`_name.lua`, defining `local function ...`) are put in front of the
scripts that call one of their functions.

Calls: each is one EVALSHA of the script's SHA (hashed once per process), and after a SCRIPT FLUSH
or a Redis restart (NOSCRIPT) a SCRIPT LOAD and the EVALSHA again. On a plain client, sync or
asyncio, `run` sends the EVALSHA itself: the per-client registry of `register_script` objects (a
weak-keyed dict) and `Script.__call__`'s `isinstance` checks against protocol classes took 3% of
the API's CPU per submission. Anything else (a pipeline, which loads its scripts at `execute`) goes
through `register_script`. The same `LuaScript` works for sync and asyncio clients (the asyncio
call returns an awaitable).
"""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis
import redis.asyncio

from app.core.job_spec import ENDING_ERRORS, Status
from app.core.redis_keys import KeyField, RequestField

# Libraries in dependency order: a library may call those before it.
LIBRARIES = ("refund", "events", "concurrency", "end_request", "commands")
_DECLARATION = re.compile(r"^--! (keys|args):(.*)$", re.MULTILINE)
_FUNCTION = re.compile(r"^local function (\w+)\(", re.MULTILINE)


def _lua_table(name: str, values: Mapping[str, str]) -> str:
    entries = ", ".join(f"{attr}={value!r}" for attr, value in values.items())
    return f"local {name} = {{{entries}}}\n"


def _constants(cls: type) -> dict[str, str]:
    return {name: value for name, value in vars(cls).items() if name.isupper() and isinstance(value, str)}


def _binding(table: str, source: str, names: Sequence[str]) -> str:
    """`local K = {}` with K.<name> = KEYS[i], and a trailing `*rest` as the list of the others."""
    lines = [f"local {table} = {{}}"]
    for index, name in enumerate(names, start=1):
        if name.startswith("*"):
            lines.append(f"{table}.{name[1:]} = {{unpack({source}, {index})}}")
        else:
            lines.append(f"{table}.{name} = {source}[{index}]")
    return "\n".join(lines) + "\n"


def _read(name: str) -> str:
    return resources.files("app.core.lua").joinpath(f"{name}.lua").read_text()


@dataclass(frozen=True)
class LuaScript:
    name: str
    key_names: tuple[str, ...]
    arg_names: tuple[str, ...]
    text: str
    sha: str

    def flatten(self, names: tuple[str, ...], given: Mapping[str, Any], what: str) -> list[Any]:
        expected = {n.lstrip("*") for n in names}
        if set(given) - expected or {n for n in names if not n.startswith("*")} - set(given):
            raise TypeError(f"{self.name}.lua takes {what} {sorted(expected)}, got {sorted(given)}")
        flat: list[Any] = []
        for name in names:
            if name.startswith("*"):
                flat += list(given.get(name[1:], ()))
            else:
                flat.append(given[name])
        return flat


@cache
def load(name: str) -> LuaScript:
    """The script `name` with its prelude and the libraries it calls."""
    body = _read(name)
    declared = {kind: tuple(names.split()) for kind, names in _DECLARATION.findall(body)}
    key_names, arg_names = declared.get("keys", ()), declared.get("args", ())
    libraries = ""
    for library in reversed(LIBRARIES):  # a library's own calls pull in those before it
        text = _read(f"_{library}")
        if any(re.search(rf"\b{name}\(", body + libraries) for name in _FUNCTION.findall(text)):
            libraries = text + libraries
    prelude = (
        _lua_table("F", _constants(RequestField))
        + _lua_table("KF", _constants(KeyField))
        + _lua_table("ST", {status.name: status.value for status in Status})
        + _lua_table("E", ENDING_ERRORS)
        + _binding("K", "KEYS", key_names)
        + _binding("A", "ARGV", arg_names)
    )
    text = prelude + libraries + body
    return LuaScript(name, key_names, arg_names, text, hashlib.sha1(text.encode()).hexdigest())


_registered: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def run(client: Any, name: str, *, keys: Mapping[str, Any], args: Mapping[str, Any] | None = None) -> Any:
    """Runs script `name` on `client` (sync: its reply; asyncio: an awaitable of it)."""
    script = load(name)
    flat_keys = script.flatten(script.key_names, keys, "keys")
    flat_args = script.flatten(script.arg_names, args or {}, "args")
    kind = type(client)  # exact types: a pipeline subclasses its client and must load at `execute`
    if kind is redis.asyncio.Redis:
        return _evalsha_async(client, script, flat_keys, flat_args)
    if kind is redis.Redis:
        try:
            return client.evalsha(script.sha, len(flat_keys), *flat_keys, *flat_args)
        except redis.exceptions.NoScriptError:
            client.script_load(script.text)
            return client.evalsha(script.sha, len(flat_keys), *flat_keys, *flat_args)
    per_client = _registered.setdefault(client, {})
    registered = per_client.get(name)
    if registered is None:
        registered = per_client[name] = client.register_script(script.text)
    return registered(keys=flat_keys, args=flat_args)


async def _evalsha_async(client: Any, script: LuaScript, keys: list[Any], args: list[Any]) -> Any:
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        await client.script_load(script.text)
        return await client.evalsha(script.sha, len(keys), *keys, *args)


def pack_commands(commands: Sequence[Sequence[Any]], encoder: Any) -> tuple[str, bytes]:
    """Commands for a script to replay, as two arguments: the layout (per command its argument
    count, then each argument's length, all comma-separated) and every argument, encoded by the
    client's `encoder`, joined into one string. One argument per command part would be packed by
    redis-py's asyncio client in Python, at a cost that grows with the square of their number (a
    submission's enqueue has about 100). Read back by `commands_in(layout, blob)` (_commands.lua)."""
    layout: list[str] = []
    parts: list[bytes] = []
    encoding, errors, encode = encoder.encoding, encoder.encoding_errors, encoder.encode
    for command in commands:
        # bytes and str first, as the encoder would encode them: its checks were a third of the cost
        encoded = [
            arg if type(arg) is bytes else arg.encode(encoding, errors) if type(arg) is str else encode(arg)
            for arg in command
        ]
        layout.append(str(len(encoded)))
        layout += [str(len(part)) for part in encoded]
        parts += encoded
    return ",".join(layout), b"".join(parts)

"""The faults of the chaos run (tests/chaos_run.py): SIGKILL of a worker, of the API or of Redis at a
random moment, and at the worst moments: a worker right after its `start` step set a request
PROCESSING, a worker right after its `finish` step, the API right after its `submit` step (credits
taken and the request queued, the answer not sent), Redis right after it answered a `finish`.
Whatever is killed comes back at once (a worker without waiting for it to be ready, as a supervisor
would restart it)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable

import redis

from app.core import lua_scripts
from tests.chaos_takeovers import Takeovers
from tests.private_redis import PrivateRedis
from tests.stack import Stack

RANDOM_KINDS = ("worker", "api", "redis")
WORST_MOMENT_KINDS = ("worker after start", "worker after finish", "api after submit", "redis after finish")
KINDS = RANDOM_KINDS + WORST_MOMENT_KINDS
# Random kills are the common case; each worst moment still comes several times in a long run.
WEIGHTS = (4, 2, 2, 2, 1, 1, 1)


def plan(rng: random.Random, count: int) -> list[str]:
    """`count` kinds of kill: each kind once first (in random order), so that a short run has met
    every fault, then drawn by WEIGHTS."""
    first = list(KINDS)
    rng.shuffle(first)
    return (first + rng.choices(KINDS, weights=WEIGHTS, k=max(0, count - len(first))))[:count]


class Fleet:
    """The stack's processes under fire: kills them, restarts them, counts both."""

    def __init__(
        self,
        stack: Stack,
        durable: PrivateRedis,
        workers: int,
        takeovers: Takeovers,
        log: Callable[[str], None],
    ):
        self.stack = stack
        self.takeovers = takeovers
        self.durable = durable
        self.worker_count = workers
        self.log = log
        self.kills: Counter = Counter()  # kind -> kills made
        self.missed: Counter = Counter()  # worst-moment kinds whose moment did not come in time
        self.killed_pids: set[int] = set()
        self.unexpected_exits: list[str] = []  # processes that died without being killed
        self.last_kill_at = 0.0  # time.time() of the last kill

    def fire(self, kind: str, rng: random.Random) -> bool:
        """One kill of `kind` and the restarts after it; False when a worst moment did not come."""
        killed = {
            "worker": lambda: self._kill(rng.choice(self.alive_workers())),
            "api": lambda: self._kill(self.stack.api),
            "redis": self._kill_redis,
            "worker after start": lambda: self._kill_after("start", self._worker_pid_in),
            "worker after finish": lambda: self._kill_after("finish", self._worker_pid_in),
            "api after submit": lambda: self._kill_after("submit", lambda line: self.stack.api.pid),
            "redis after finish": lambda: self._kill_after("finish", lambda line: self.durable.pid),
        }[kind]()
        if killed is False:
            self.missed[kind] += 1
            self.log(f"chaos: {kind}: the moment did not come")
            return False
        self.kills[kind] += 1
        self.last_kill_at = time.time()
        began = time.monotonic()
        self.restore()
        self.log(f"chaos: SIGKILL {kind}; restarted in {time.monotonic() - began:.1f} s")
        return True

    def alive_workers(self) -> list[subprocess.Popen]:
        return [p for p in self.stack.workers if p.poll() is None]

    def _kill(self, process: subprocess.Popen) -> None:
        self._sigkill(process.pid)
        process.wait(timeout=10)

    def _sigkill(self, pid: int) -> None:
        """SIGKILL; a worker's requests are then followed until they are taken from it (its
        heartbeat, read after the kill so as not to delay it, outlives it by its TTL)."""
        self.killed_pids.add(pid)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        if pid == self.durable.pid or pid == self.stack.api.pid:
            return
        for beat in self._heartbeats():
            if beat["pid"] == pid:
                self.takeovers.watch(beat["id"], killed_at)

    def _kill_redis(self) -> None:
        self.killed_pids.add(self.durable.pid)
        self.durable.kill()

    def _kill_after(self, script: str, pick_pid: Callable[[str], int | None], timeout: float = 15) -> bool:
        """SIGKILLs the process `pick_pid` names from the MONITOR line of a call of `script` the
        moment Redis shows it: the process has made that step and nothing after it."""
        sha = hashlib.sha1(lua_scripts.load(script).text.encode()).hexdigest()
        deadline = time.monotonic() + timeout
        try:
            with self.durable.client().monitor() as monitor:
                while time.monotonic() < deadline:
                    try:
                        line = monitor.next_command()["command"]
                    except redis.TimeoutError:
                        continue
                    if not line.startswith(f"EVALSHA {sha}"):
                        continue
                    pid = pick_pid(line)
                    if pid is not None:
                        self._sigkill(pid)
                        self._reap(pid)
                        return True
        except redis.ConnectionError:
            pass  # Redis went away under the watch (it is ours to restart): the moment is missed
        return False

    def _reap(self, pid: int) -> None:
        for process in [*self.stack.workers, self.stack.api, self.durable.process]:
            if process is not None and process.pid == pid:
                process.wait(timeout=10)

    def _heartbeats(self) -> list[dict]:
        client = self.durable.client()
        beats = [client.get(key) for key in client.scan_iter(match=f"{self.stack.prefix}:worker:*")]
        return [json.loads(raw) for raw in beats if raw]

    def _worker_pid_in(self, line: str) -> int | None:
        """The pid of the worker (one of ours, alive) whose id the script's words carry."""
        ours = {p.pid for p in self.alive_workers()}
        words = set(line.split(" "))  # redis-py's MONITOR line: the words unquoted, space-separated
        for beat in self._heartbeats():
            if beat["id"] in words and beat["pid"] in ours:
                return beat["pid"]
        return None

    def restore(self) -> None:
        """Redis, then the API, then the workers back to their count; a process that died without
        being killed is noted (it is a finding) and restarted like the others."""
        if self.durable.process.poll() is not None:
            self._note_exit("redis", self.durable.process)
            self.durable.start()
        if self.stack.api is None or self.stack.api.poll() is not None:
            self._note_exit("api", self.stack.api)
            self._with_retries(self.stack.start_api)
        for process in self.stack.workers:
            if process.poll() is not None:
                self._note_exit("worker", process)
        for _ in range(self.worker_count - len(self.alive_workers())):
            self._with_retries(lambda: self.stack.start_worker(wait=False))

    def _note_exit(self, what: str, process: subprocess.Popen | None) -> None:
        if process is None or process.pid in self.killed_pids:
            return
        self.killed_pids.add(process.pid)  # noted once
        self.unexpected_exits.append(f"{what} pid {process.pid} exited with code {process.returncode}")
        self.log(f"chaos: UNEXPECTED EXIT: {self.unexpected_exits[-1]}")

    @staticmethod
    def _with_retries(start: Callable[[], object], tries: int = 3) -> None:
        for attempt in range(tries):
            try:
                start()
                return
            except (RuntimeError, TimeoutError, redis.RedisError):
                if attempt == tries - 1:
                    raise
                time.sleep(1)

    def wait_ready(self, timeout: float = 120) -> None:
        """Every process back and the workers announced in the registry."""
        self.restore()

        def all_beating() -> bool:
            alive = {p.pid for p in self.alive_workers()}
            return len(alive) == self.worker_count and alive <= {b["pid"] for b in self._heartbeats()}

        self.stack.wait_for(all_beating, "the workers to be back", timeout=timeout)

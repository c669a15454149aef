"""A redis-server of the test's own, on a port of its own, so that a test can freeze, stop or kill
it and start it again where the clients expect it. `durable=True` keeps what it acknowledged
through a SIGKILL: AOF with `appendfsync always` (every write is on disk before its reply), no RDB
snapshots, in a directory of its own that a restart reads back."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import redis

from tests.stack import free_port


class PrivateRedis:
    def __init__(self, durable: bool = False) -> None:
        self.port = free_port()
        self.durable = durable
        self.directory = tempfile.mkdtemp(prefix="private-redis-")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def client(self, **options) -> redis.Redis:
        return redis.Redis(port=self.port, **{"socket_timeout": 5, **options})

    def start(self, timeout: float = 30) -> None:
        persistence = ("yes", "--appendfsync", "always") if self.durable else ("no",)
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory),
                *("--save", "", "--appendonly", *persistence),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        probe = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout
        # PING answers LOADING (an error) until the AOF is read back: only then is the data there.
        while not self._answers(probe):
            if time.monotonic() > deadline:
                raise TimeoutError("the private Redis did not answer")
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}")
            time.sleep(0.05)
        probe.close()

    @staticmethod
    def _answers(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(timeout=10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart_after_kill(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def running_private_redis() -> Iterator[PrivateRedis]:
    """A `private_redis` fixture's body (`yield from` it): a started server, closed after the test."""
    server = PrivateRedis()
    server.start()
    yield server
    server.close()

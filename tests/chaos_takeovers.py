"""How soon the requests of a SIGKILLed worker are taken from it (CONTRACT 6: run again elsewhere,
or FAILED "worker lost", within SDXL_JOB_LOST_S of the death), watched during the chaos run: for
each killed worker, the requests PROCESSING in its name at the kill, each until it is no longer."""

from __future__ import annotations

import threading
import time

import redis

from app.core.redis_keys import RedisKeys, RequestField
from tests.private_redis import PrivateRedis


class Takeovers:
    def __init__(self, durable: PrivateRedis, keys: RedisKeys, give_up_s: float):
        self.durable = durable
        self.keys = keys
        self.give_up_s = give_up_s
        self.lock = threading.Lock()
        self.seconds: list[float] = []  # kill -> the request left the dead worker, one per request
        self.never: list[str] = []  # requests still held by a dead worker after give_up_s
        self.threads: list[threading.Thread] = []

    def watch(self, worker_id: str, killed_at: float) -> None:
        """`killed_at` is time.monotonic() of the kill; Redis may be down (it is retried)."""
        thread = threading.Thread(target=self._follow, args=(worker_id, killed_at), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _held_by(self, client: redis.Redis, worker_id: str) -> list[str]:
        held = []
        for raw_id in client.zrange(self.keys.processing, 0, -1):
            status, worker = client.hmget(
                self.keys.request(raw_id.decode()), [RequestField.STATUS, RequestField.WORKER]
            )
            if status == b"PROCESSING" and worker == worker_id.encode():
                held.append(raw_id.decode())
        return held

    def _follow(self, worker_id: str, killed_at: float) -> None:
        client = self.durable.client(socket_timeout=1)
        victims: list[str] | None = None
        while time.monotonic() - killed_at < self.give_up_s:
            try:
                held = self._held_by(client, worker_id)
            except redis.RedisError:
                time.sleep(0.1)
                continue
            if victims is None:
                victims = held
            with self.lock:
                for request_id in [v for v in victims if v not in held]:
                    self.seconds.append(time.monotonic() - killed_at)
                    victims.remove(request_id)
            if not victims:
                return
            time.sleep(0.1)
        with self.lock:
            self.never.extend(victims or [])

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=self.give_up_s + 5)

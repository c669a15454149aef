"""`sdxl-img2img worker`: one long-lived, non-forking process per GPU.

Pipelines stay resident (warmed up at start); RQ's SimpleWorker pops jobs from the queues of this
worker's models and runs them in this process (a forking worker would throw the pipelines away and
cannot re-initialise CUDA). A heartbeat thread announces the worker (a TTL key, and the registry of
live workers: app/core/worker_registry.py) and reaps the requests of workers that died. SIGTERM
is a warm stop: the current job finishes, then the process exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from rq import Queue, SimpleWorker, worker_registration
from rq.exceptions import StopRequested
from rq.serializers import JSONSerializer
from rq.worker import DequeueStrategy

from app.core import worker_registry
from app.core.content_blocks import BlockedTermsError
from app.core.lifecycle import Lifecycle
from app.core.models_config import ModelsConfig
from app.core.reaper import hand_back, reap_lost_requests
from app.core.redis_clients import sync_client
from app.core.redis_keys import RedisKeys
from app.core.settings import Settings
from worker.job_context import WorkerContext, install_context
from worker.moderation import load_moderation

log = logging.getLogger("sdxl.worker")

# RQ's own idea of a live worker (its registry keys); ours is the heartbeat key below.
RQ_WORKER_TTL_S = 35
# Beats failing in a row (not Redis outages: bugs, bad data) before the worker stops and exits 1.
MAX_FAILED_BEATS = 3


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Heartbeat(threading.Thread):
    """Writes this worker's heartbeat key every third of its TTL and reaps lost requests."""

    def __init__(self, settings: Settings, context: WorkerContext, models: list[str], engine_info) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.settings = settings
        self.context = context
        self.models = models
        self.engine_info = engine_info
        self.client = sync_client(settings)
        self.stopped = threading.Event()
        self.failed_beats = 0
        self.lost = False  # the heartbeat could not be kept: the worker exits non-zero
        self.started_at = time.time()
        self.rq_worker: SimpleWorker | None = None  # set once RQ's worker exists
        self.rq_queues = [
            Queue(context.keys.queue_name(name), connection=self.client, serializer=JSONSerializer)
            for name in models
        ]

    def beat(self) -> None:
        value = {
            "id": self.context.worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "models": self.models,
            "started_at": self.started_at,
            "current": self.context.current.get("request_id"),
            **self.engine_info(),
        }
        ttl_ms = int(self.settings.heartbeat_ttl_s * 1000)
        self.client.set(self.context.keys.worker(self.context.worker_id), json.dumps(value), px=ttl_ms)
        worker_registry.register(
            self.client, self.context.keys, self.context.worker_id, self.models, self.settings.heartbeat_ttl_s
        )
        if self.rq_worker is not None:
            # RQ gives its worker hash the job's timeout plus a minute while a job runs (an hour
            # here), so a worker killed mid-job would linger in RQ's registries: keep it short.
            # EXPIRE only (never a write that could create the hash before RQ registers it).
            with self.client.pipeline(transaction=False) as pipe:
                pipe.expire(self.rq_worker.key, RQ_WORKER_TTL_S + 60)
                pipe.expire(self.rq_worker.executions_key, RQ_WORKER_TTL_S + 60)
                pipe.execute()

    def clean_rq_registries(self) -> None:
        """RQ's own cleanup of `rq:workers`: members whose worker hash has expired leave it."""
        for queue in self.rq_queues:
            worker_registration.clean_worker_registry(queue)

    def hand_back_orphans(self) -> None:
        """Requests whose job Redis failed under are still held in this worker's name: give them up
        (run again elsewhere, or FAILED "worker lost" with a refund). Raises while Redis is down."""
        for request_id in list(self.context.orphans):
            outcome = hand_back(
                self.client, self.context.keys, self.context.lifecycle, request_id, self.context.worker_id
            )
            self.context.orphans.discard(request_id)
            log.warning("request handed back", extra={"request_id": request_id, "outcome": outcome})

    def run(self) -> None:
        while not self.stopped.wait(self.settings.heartbeat_ttl_s / 3):
            if not self._supervised("heartbeat", self.beat):
                self.failed_beats += 1
                if self.failed_beats >= MAX_FAILED_BEATS:
                    self.give_up()
                    return
            else:
                self.failed_beats = 0
            self._supervised("RQ registries", self.clean_rq_registries)
            self._supervised("hand back", self.hand_back_orphans)
            self._supervised("reaper", self.reap)

    def reap(self) -> None:
        reap_lost_requests(
            self.client,
            self.context.keys,
            self.context.lifecycle,
            stranded_after_s=self.settings.stranded_after_s,
        )

    def _supervised(self, what: str, step: Callable[[], Any]) -> bool:
        """Runs one step of the loop; an exception is logged (a Redis outage briefly) and the loop
        goes on: one bad record, or one bug, must not silence the heartbeat. False when it failed
        for another reason than Redis (whose outages are waited through)."""
        try:
            step()
        except redis.ResponseError:
            # Redis answered, with an error (a key of the wrong type, a script error): bad data, not an
            # outage to wait through.
            log.exception(f"{what} failed; the loop goes on")
            return False
        except redis.RedisError as exc:
            log.warning(f"{what}: Redis unavailable", extra={"error": str(exc)})
        except Exception:
            log.exception(f"{what} failed; the loop goes on")
            return False
        return True

    def give_up(self) -> None:
        """The heartbeat cannot be kept: the reaper would soon take this worker's requests anyway.
        Stop taking jobs (RQ's warm stop: the job in flight ends first) and exit non-zero, so that the
        supervisor restarts a fresh worker."""
        log.error("heartbeat failed %d times in a row: stopping the worker", self.failed_beats)
        self.lost = True
        os.kill(os.getpid(), signal.SIGTERM)

    def stop(self) -> None:
        self.stopped.set()
        if self.is_alive() and threading.current_thread() is not self:
            # A beat in flight would write the heartbeat key again after the delete below.
            self.join(timeout=5)
        with contextlib.suppress(redis.RedisError):
            self.client.delete(self.context.keys.worker(self.context.worker_id))
            worker_registry.unregister(self.client, self.context.keys, self.context.worker_id, self.models)


def device_info(engine) -> dict:
    """What the heartbeat tells about the device: resident models and, on a GPU, its memory in use."""
    import torch

    info = dict(engine.info())
    on_cuda = torch.cuda.is_available() and str(info.get("device", "")).startswith("cuda")
    info["gpu_memory_bytes"] = torch.cuda.memory_allocated() if on_cuda else None
    info["gpu_peak_memory_bytes"] = torch.cuda.max_memory_allocated() if on_cuda else None
    return info


def engine_device(settings: Settings) -> str:
    """Where the safety checker runs: the GPU when the engine has one."""
    import torch

    return "cuda" if settings.device != "cpu" and torch.cuda.is_available() else "cpu"


def stop_requested(worker: SimpleWorker) -> bool:
    # rq notes a SIGTERM/SIGINT as a shutdown date (an idle worker leaves without _stop_requested).
    return bool(worker._stop_requested or worker._shutdown_requested_date is not None)


def until_redis_answers(
    step: Callable[[], object], keep_trying: Callable[[], bool] = lambda: True, warning: str | None = None
) -> None:
    """Runs `step` until it gets through Redis, once a second while Redis errors (saying `warning`
    once, if given), or until `keep_trying` says no."""
    warned = False
    while keep_trying():
        try:
            step()
            return
        except redis.RedisError as exc:
            if warning and not warned:
                log.warning(warning, extra={"error": str(exc)})
                warned = True
            time.sleep(1)


def wait_for_redis(worker: SimpleWorker) -> None:
    """Blocks until Redis answers again, then marks this worker's old RQ registration dead: a Redis
    that kept its data still holds it, and RQ refuses to start a worker whose name is alive."""

    def ping_and_reregister() -> None:
        worker.connection.ping()
        worker.register_death()

    until_redis_answers(ping_and_reregister, keep_trying=lambda: not stop_requested(worker))


def first_beat(heartbeat: Heartbeat) -> None:
    """The worker's first announcement, made as soon as Redis answers: a worker that starts while
    Redis is down or restarting (a supervisor restarts both at once) waits for it, as a running
    worker does, instead of dying on the first call."""
    until_redis_answers(heartbeat.beat, warning="Redis unavailable at start; waiting for it")


def warm_up(engine: Any, model_names: list[str]) -> None:
    """Loads (and compiles, with SDXL_COMPILE) what fits in memory; the other models load on their
    first job (LRU). A model that fails to load is logged: the worker serves its other models, and
    this one's jobs fail with the reason."""
    from worker.errors import ModelLoadError

    for name in model_names:
        t0 = time.monotonic()
        try:
            engine.warm_up([name])
            log.info("model ready", extra={"model": name, "seconds": round(time.monotonic() - t0, 3)})
        except ModelLoadError as exc:
            log.error("model failed to load", extra={"model": name, "error": str(exc)})


def run_worker(settings: Settings, models_config: ModelsConfig, model_names: list[str]) -> int:
    from worker.engine import Engine
    from worker.safety import SafetyCheckerError

    keys = RedisKeys(settings.redis_prefix)
    started = time.monotonic()
    try:
        moderation = load_moderation(settings, device=engine_device(settings))
    except (BlockedTermsError, SafetyCheckerError) as exc:
        # A content block that cannot apply must not be skipped silently: no worker at all.
        log.error("content blocks cannot be loaded", extra={"error": str(exc)})
        return 2
    engine = Engine(settings, models_config)
    warm_up(engine, model_names[: settings.max_resident_models])
    log.info("worker warm", extra={"seconds": round(time.monotonic() - started, 3), "models": model_names})

    context = WorkerContext(
        worker_id=new_worker_id(),
        keys=keys,
        lifecycle=Lifecycle(keys, settings.result_ttl_s, settings.max_queue_time_s),
        redis=sync_client(settings),
        engine=engine,
        max_batch=engine.fast.max_batch,
        max_batch_images=engine.fast.max_batch_images,
        batch_window_s=engine.fast.batch_window_s,
    )
    context.moderation = moderation
    install_context(context)
    heartbeat = Heartbeat(settings, context, model_names, engine_info=lambda: device_info(engine))
    context.stop_heartbeat = heartbeat.stop
    # Until RQ's work() installs its own handlers (after its bootstrap, which can fail on Redis and
    # be retried), SIGTERM's default action would end the process with this worker left in the
    # registry: leave through the `finally` (unregister) instead, with the exit code of a stop.
    signal.signal(signal.SIGTERM, _stop_before_rq)
    try:
        first_beat(heartbeat)
        heartbeat.start()
        worker = rq_worker(settings, keys, model_names, context)
        heartbeat.rq_worker = worker
        log.info("worker listening", extra={"worker": context.worker_id, "queues": worker.queue_names()})
        work_until_stopped(worker, settings.log_level)
    except StopRequested:
        pass  # SIGTERM during the first beat or before RQ's loop was entered
    finally:
        heartbeat.stop()
        install_context(None)
    # A heartbeat that gave up stops the worker with a SIGTERM of its own: exit 1, to be restarted.
    return 1 if heartbeat.lost else 0


def _stop_before_rq(signum: int, frame: Any) -> None:
    raise StopRequested()


def rq_worker(
    settings: Settings, keys: RedisKeys, model_names: list[str], context: WorkerContext
) -> SimpleWorker:
    rq_connection = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=settings.redis_socket_timeout_s
    )
    queues = [
        Queue(keys.queue_name(name), connection=rq_connection, serializer=JSONSerializer)
        for name in model_names
    ]
    return SimpleWorker(
        queues,
        connection=rq_connection,
        serializer=JSONSerializer,
        name=context.worker_id,
        worker_ttl=RQ_WORKER_TTL_S,
    )


def work_until_stopped(worker: SimpleWorker, log_level: str) -> None:
    """RQ's loop, entered again after a Redis outage, until a stop (SIGTERM, Ctrl-C) is asked."""
    try:
        while not stop_requested(worker):
            try:
                # Round robin: after each job the queue it came from goes last, so a worker serving
                # several models takes from their queues in turn (one busy model cannot starve another).
                worker.work(
                    with_scheduler=False,
                    logging_level=log_level,
                    dequeue_strategy=DequeueStrategy.ROUND_ROBIN,
                )
            except redis.RedisError as exc:
                # RQ leaves its loop on a Redis error, and its teardown then fails on Redis too.
                log.warning("worker loop: Redis unavailable", extra={"error": str(exc)})
            if stop_requested(worker):
                break
            log.warning("worker loop ended; waiting for Redis")
            wait_for_redis(worker)
    except StopRequested:
        # SIGTERM while waiting for Redis outside RQ's loop: rq's handler raises this, and so does
        # _stop_before_rq while RQ's bootstrap has not got through.
        pass

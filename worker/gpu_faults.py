"""GPU faults of a generation, told apart by what they leave behind.

Out of memory leaves the device usable: the allocator cache is freed and the batch runs again in
halves (a request alone runs once more); a request that still does not fit ends FAILED "out of GPU
memory", refunded, and the worker serves on. A fatal device error (an illegal memory access, a
device-side assert, a failed launch) poisons the CUDA context: every later call in this process
fails too, so the worker hands its requests back to their queues, leaves the registry of live
workers and exits with `FATAL_DEVICE_EXIT_CODE`, for its supervisor to start a fresh process.

torch is imported only when a fault is examined, so that importing this module costs nothing.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NoReturn, TypeVar

import redis

from app.core.logging_setup import bind_request_id
from app.core.reaper import hand_back, retire_rq_worker

if TYPE_CHECKING:
    from worker.job_context import WorkerContext

log = logging.getLogger("sdxl.worker")

OUT_OF_MEMORY = "out of GPU memory"  # the request's error (CONTRACT 6: a reason for a person)
# sysexits' EX_SOFTWARE: distinct from 1 (the heartbeat gave up) and 2 (content blocks cannot load).
FATAL_DEVICE_EXIT_CODE = 70

# What CUDA says when its context is poisoned (a "sticky" error: every later call fails alike).
# torch raises them as torch.AcceleratorError (a RuntimeError) since 2.8, as plain RuntimeError before.
FATAL_MARKERS = (
    "illegal memory access",
    "device-side assert triggered",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "cuda error",
)
# Not poisoned: a failed allocation outside the caching allocator (cuBLAS workspaces, cuDNN) is
# reported as "CUDA error: out of memory" and is an out-of-memory like any other.
OUT_OF_MEMORY_MARKERS = ("cuda out of memory", "cuda error: out of memory")

Job = TypeVar("Job")


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OUT_OF_MEMORY_MARKERS)


def is_fatal_device_error(exc: BaseException) -> bool:
    """A CUDA error after which this process cannot use the device any more (out of memory aside)."""
    import torch

    if not isinstance(exc, RuntimeError) or is_out_of_memory(exc):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in FATAL_MARKERS)


def free_cached_memory() -> None:
    """What the failed call left: its tensors (once the exception and the frames its traceback holds
    are gone, so call this outside the `except` block), then the allocator's cached blocks, so that
    the retry and the jobs after it find the memory free."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def split_after_out_of_memory(batch: Sequence[Job], retried: bool) -> list[list[Job]]:
    """What runs again after `batch` ran out of memory: its two halves, each on its own retry (a half
    that runs out again is halved again), or a request alone once more; nothing for a request alone
    that has had its retry (it fails). At most 2n - 1 calls for n requests, n + 1 for one."""
    if len(batch) > 1:
        middle = (len(batch) + 1) // 2
        return [list(batch[:middle]), list(batch[middle:])]
    return [] if retried else [list(batch)]


def exit_for_device_error(ctx: WorkerContext, request_ids: Iterable[str], exc: BaseException) -> NoReturn:
    """The CUDA context is poisoned: nothing more can run here. The requests go back to the front of
    their queues (reap.lua's hand back: they keep their credits reserved and run again on another
    worker; one on its last attempt ends FAILED "worker lost", refunded, so a request that breaks
    the device every time cannot take the fleet down one worker after another), the worker leaves
    the registries, and the process exits before RQ could end the job (RQ would delete its job hash,
    which the requeued request needs)."""
    held = list(dict.fromkeys([*request_ids, *ctx.orphans]))
    log.critical(
        "fatal device error: handing the requests back and exiting",
        extra={
            "error": f"{type(exc).__name__}: {exc}"[:500],
            "requests": held,
            "exit_code": FATAL_DEVICE_EXIT_CODE,
        },
    )
    if ctx.stop_heartbeat is not None:
        ctx.stop_heartbeat()  # no beat may announce this worker again once it has left the registry
    for request_id in held:
        with bind_request_id(request_id):
            try:
                outcome = hand_back(ctx.redis, ctx.keys, ctx.lifecycle, request_id, ctx.worker_id)
                log.warning("request handed back", extra={"outcome": outcome})
            except redis.RedisError as error:
                # Its heartbeat is gone: the other reapers requeue it within SDXL_JOB_LOST_S.
                log.error("hand back failed", extra={"error": str(error)})
            except Exception:
                log.exception("hand back failed")
    try:
        retire_rq_worker(ctx.redis, ctx.worker_id)
    except Exception as error:
        log.warning("RQ registration not retired", extra={"error": str(error)})
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # No interpreter teardown: atexit and finalizers could touch the poisoned device (and hang).
    os._exit(FATAL_DEVICE_EXIT_CODE)

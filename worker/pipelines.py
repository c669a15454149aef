"""Resident pipelines, one per model name, at most `SDXL_MAX_RESIDENT_MODELS` of them (LRU).

Loading SDXL takes seconds to minutes, so a worker keeps its models loaded between jobs; switching
between resident models, or between schedulers, loads nothing again (`load_count` proves it). When a
new model needs room, the least recently used one is dropped first and the GPU memory it held is
given back before the new weights arrive. A model that fails to load raises `ModelLoadError` every
time it is asked for; the failure is remembered for `failure_ttl_s` so that a queue of jobs for a
broken model does not retry the (slow) load for each of them, then the load is tried again.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from app.core.models_config import ModelEntry, ModelsConfig
from app.core.settings import Settings
from worker.device import pick_dtype
from worker.errors import ModelLoadError, UnknownModel
from worker.loading import load_pipeline

log = logging.getLogger(__name__)

DEFAULT_FAILURE_TTL_S = 30.0

Loader = Callable[..., Any]


class PipelineCache:
    def __init__(
        self,
        settings: Settings,
        models: ModelsConfig,
        *,
        device: torch.device,
        failure_ttl_s: float = DEFAULT_FAILURE_TTL_S,
        loader: Loader = load_pipeline,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._models = models
        self._device = device
        self._failure_ttl_s = failure_ttl_s
        self._loader = loader
        self._clock = clock
        self._resident: OrderedDict[str, Any] = OrderedDict()  # most recently used last
        # A snapshot of the names, replaced (never mutated) under the lock: readers such as the
        # heartbeat thread must not wait for a load that holds the lock for a minute.
        self._names: tuple[str, ...] = ()
        self._failures: dict[str, tuple[float, ModelLoadError]] = {}
        self._loads: Counter[str] = Counter()
        self._attempts: Counter[str] = Counter()
        self._lock = threading.RLock()

    @property
    def device(self) -> torch.device:
        return self._device

    def entry(self, name: str) -> ModelEntry:
        entry = self._models.models.get(name)
        if entry is None:
            raise UnknownModel(name, self._models.names)
        return entry

    def get(self, name: str) -> Any:
        """The resident pipeline of `name`, loading it (and evicting the LRU one) if needed."""
        entry = self.entry(name)
        with self._lock:
            pipe = self._resident.get(name)
            if pipe is not None:
                self._resident.move_to_end(name)
                self._names = tuple(self._resident)
                return pipe
            failed = self._failures.get(name)
            if failed is not None and self._clock() < failed[0]:
                error = failed[1]
                raise ModelLoadError(error.name, error.source, error.reason)
            while len(self._resident) >= self._settings.max_resident_models:
                self._evict_oldest()
            dtype = pick_dtype(self._device, entry)
            started = time.perf_counter()
            self._attempts[name] += 1
            try:
                pipe = self._loader(name, entry, settings=self._settings, device=self._device, dtype=dtype)
            except ModelLoadError as exc:
                self._failures[name] = (self._clock() + self._failure_ttl_s, exc)
                log.error("model failed to load", extra={"model": name, "error": exc.message})
                raise
            self._failures.pop(name, None)
            self._loads[name] += 1
            self._resident[name] = pipe
            self._names = tuple(self._resident)
            log.info(
                "model loaded",
                extra={
                    "model": name,
                    "device": str(self._device),
                    "dtype": str(dtype).removeprefix("torch."),
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )
            return pipe

    def warm_up(self, names: list[str]) -> dict[str, ModelLoadError]:
        """Load `names` (the last `max_resident_models` of them stay); returns the ones that failed."""
        failures: dict[str, ModelLoadError] = {}
        for name in names:
            try:
                self.get(name)
            except ModelLoadError as exc:
                failures[name] = exc
        return failures

    def resident(self) -> list[str]:
        """Names of the resident models, least recently used first (never waits for a load)."""
        return list(self._names)

    def load_count(self, name: str | None = None) -> int:
        """How many times weights were loaded (for `name`, or in all): switching must not add to it."""
        return self._loads[name] if name is not None else sum(self._loads.values())

    def load_attempts(self, name: str) -> int:
        """Loads tried for `name`, failed ones included (the failure memory keeps this low)."""
        return self._attempts[name]

    def evict(self, name: str) -> bool:
        with self._lock:
            if name not in self._resident:
                return False
            del self._resident[name]
            self._names = tuple(self._resident)
            self._free_memory()
            return True

    def _evict_oldest(self) -> None:
        name, _ = self._resident.popitem(last=False)
        self._names = tuple(self._resident)
        log.info("model evicted", extra={"model": name})
        self._free_memory()

    def _free_memory(self) -> None:
        # The pipeline is unreachable once dropped from the cache (per-job views die with their job);
        # collect it now and hand the CUDA allocator's cached blocks back before the next load.
        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

"""The peak resident memory of a running process (an API subprocess), sampled in a thread."""

from __future__ import annotations

import threading
from types import TracebackType

import psutil


class PeakRss:
    """`with PeakRss(pid) as peak: ...` then `peak.baseline_mb`, `peak.peak_mb`, `peak.growth_mb`."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.baseline_mb = self.peak_mb = self._rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss_mb(self) -> float:
        return self.process.memory_info().rss / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.peak_mb = max(self.peak_mb, self._rss_mb())
            except psutil.Error:  # the process ended
                return

    @property
    def growth_mb(self) -> float:
        return self.peak_mb - self.baseline_mb

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())

"""Per-step watching of a running batch: progress written, cancels, deadlines and ownership read back,
in one Lua step per denoising step."""

from __future__ import annotations

from app.core.job_spec import JobSpec
from worker.job_context import WorkerContext


class JobWatch:
    """Progress, cancel flags and ownership for every request of a batch: one Lua step per step.

    A request is dropped from the run when it is cancelled, or when it is not this worker's any
    more: a worker frozen longer than its heartbeat (SIGSTOP, swap) whose request was taken over
    stops at its next step instead of running on beside its replacement."""

    def __init__(self, ctx: WorkerContext, specs: list[JobSpec]) -> None:
        self.ctx = ctx
        self.request_ids = [spec.request_id for spec in specs]
        self._read(None, 0)

    def _read(self, step: int | None, total: int) -> None:
        flags = self.ctx.lifecycle.progress(self.ctx.redis, self.request_ids, self.ctx.worker_id, step, total)
        self.cancelled = [int(flag) == 1 for flag in flags]
        self.lost = [int(flag) == 2 for flag in flags]
        self.expired = [int(flag) == 3 for flag in flags]  # past its Cancel-After deadline

    def on_step(self, step: int, total: int) -> None:
        self._read(step, total)

    def should_cancel(self) -> bool:
        return any(self.cancelled) or any(self.lost) or any(self.expired)

"""Structured logs: one JSON object per line on stderr, in the API and the worker alike.

Each line has `ts` (UTC, ISO 8601), `level`, `component` (api, worker, ...), `logger`, `msg`, the
`request_id` of the request being served when one is bound, the fields passed with `extra=`, and
`exc` (the formatted traceback) when an exception is logged. Log collectors (Loki, CloudWatch,
`docker compose logs | jq`) read it as is.

The request id travels in a ContextVar, so every line logged while a request (API) or a job
(worker) is handled carries it without being passed around: bind it with `bind_request_id`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from app.core.settings import Settings

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# uvicorn configures these itself unless run with `log_config=None`; we route them through ours.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
# Attributes every LogRecord has: anything else on a record came from `extra=` and is a field.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_RESERVED = ("ts", "level", "component", "logger", "msg", "request_id", "exc")


@contextlib.contextmanager
def bind_request_id(request_id: str | None) -> Iterator[None]:
    """Every line logged inside the block (in this task or thread context) carries `request_id`."""
    token = request_id_var.set(request_id)
    try:
        yield
    finally:
        request_id_var.reset(token)


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "component": self.component,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get() or record.__dict__.get("request_id")
        if request_id:
            entry["request_id"] = request_id
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            # uvicorn's access line, as fields: (client, method, path, http version, status).
            client, method, path, _, status = record.args
            entry.update(client=client, method=method, path=path, status=status)
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and name not in _RESERVED and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["exc"] = self.formatStack(record.stack_info)
        # default=str: a stray object in `extra=` must never turn a log call into a crash.
        return json.dumps(entry, default=str, ensure_ascii=False)


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler configure_logging installed, so that calling it again replaces it."""


def configure_logging(settings: Settings, component: str, stream: TextIO | None = None) -> None:
    """Send every log record of this process, as JSON lines, to stderr at `SDXL_LOG_LEVEL`.

    Call once where the process starts (API, worker, CLI command). For uvicorn, start it with
    `log_config=None` so that it does not install its own handlers over these.
    """
    handler = _OurHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(component))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    # One INFO line per outgoing HTTP call (image fetches, hub downloads): kept for DEBUG only.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING)
    logging.captureWarnings(True)

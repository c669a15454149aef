"""Structured logs, read as an operator's log collector would: a real process's stderr, line by line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import REPO_ROOT

SNIPPET = textwrap.dedent(
    """
    import logging, threading, time
    import httpx, uvicorn
    from app.core.logging_setup import bind_request_id, configure_logging
    from app.core.settings import Settings

    configure_logging(Settings(log_level="INFO"), "api")
    configure_logging(Settings(log_level="INFO"), "api")  # twice: still one line per record
    log = logging.getLogger("app.demo")
    log.debug("hidden at INFO")
    log.info("plain %s", "line")
    with bind_request_id("req-123"):
        log.warning("inside", extra={"base_model": "tiny", "steps": 30, "obj": object()})
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("failed")

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        with bind_request_id("req-http"):
            logging.getLogger("app.route").info("handling")
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    # uvicorn started the way the api command does: log_config=None, our handlers stay.
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None))
    thread = threading.Thread(target=server.run)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    assert httpx.get(f"http://127.0.0.1:{port}/x?y=1").status_code == 204
    server.should_exit = True
    thread.join()
    """
)


def run_snippet() -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-c", SNIPPET], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # logs go to stderr only
    return [json.loads(line) for line in proc.stderr.splitlines()]  # every line is one JSON object


def test_json_lines_with_request_id_extras_exceptions_and_uvicorn() -> None:
    lines = run_snippet()
    by_msg = {line["msg"]: line for line in lines}

    plain = by_msg["plain line"]
    assert plain["level"] == "INFO" and plain["component"] == "api" and plain["logger"] == "app.demo"
    assert plain["ts"].endswith("Z") and "T" in plain["ts"]
    assert "request_id" not in plain
    assert "hidden at INFO" not in by_msg
    assert sum(1 for line in lines if line["msg"] == "plain line") == 1

    inside = by_msg["inside"]
    assert inside["request_id"] == "req-123"
    assert inside["level"] == "WARNING"
    assert inside["base_model"] == "tiny" and inside["steps"] == 30
    assert inside["obj"].startswith("<object object")

    failed = by_msg["failed"]
    assert failed["level"] == "ERROR" and "request_id" not in failed
    assert "ZeroDivisionError" in failed["exc"] and "Traceback" in failed["exc"]

    assert by_msg["handling"]["request_id"] == "req-http"
    uvicorn_lines = [line for line in lines if line["logger"].startswith("uvicorn")]
    assert any("Uvicorn running on" in line["msg"] for line in uvicorn_lines)
    access = [line for line in uvicorn_lines if line["logger"] == "uvicorn.access"]
    assert len(access) == 1
    assert access[0]["method"] == "GET" and access[0]["path"] == "/x?y=1" and access[0]["status"] == 204
    assert access[0]["request_id"] == "req-http"
    assert all(line["component"] == "api" for line in lines)

"""`sdxl-img2img api [--host H] [--port P]`: the HTTP API."""

from __future__ import annotations

import argparse
import signal


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("api", help="run the HTTP API")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.set_defaults(handler=run)


def app_from_env():
    """The app as each uvicorn worker process builds it: settings from the environment, JSON logs."""
    from app.api.app_factory import create_app
    from app.core.logging_setup import configure_logging
    from app.core.settings import load_settings

    settings = load_settings()
    configure_logging(settings, "api")
    return create_app(settings)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    # One process builds the app here (a bad setting stops it now, with its message); with
    # --workers N, uvicorn's supervisor starts N processes that each build their own from the factory.
    app = app_from_env()
    if args.workers > 1:
        app = f"{__name__}:app_from_env"
    # uvicorn drains on SIGTERM, then raises the signal again with the handler that was there before
    # it started: with the default one the process dies by the signal (exit -15) after a clean drain.
    # A no-op handler makes a drained stop exit 0, as process managers expect.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        # SIGTERM: stop accepting, let requests in flight (v1 waits included) finish for a while.
        timeout_graceful_shutdown=30,
        limit_concurrency=None,
        backlog=4096,
        workers=args.workers if args.workers > 1 else None,
        factory=args.workers > 1,
    )
    return 0

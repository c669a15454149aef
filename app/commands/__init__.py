"""One module per CLI command. Each exposes `register(subparsers)`; none imports torch at import time
(the worker-side commands import the engine inside their handler)."""

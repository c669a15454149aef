"""The core: what the API and the worker share about a request, and nothing about HTTP or GPUs.

Settings, typed errors and logging; the job spec handed to a worker and the Redis names it lives
under; the request model (fields, defaults, ranges, error messages); API keys, admission and credits;
the request lifecycle decided in Lua (`lua/`), reading a request back, the reaper; image intake and
fetching; answer bodies and webhook delivery; the Redis side of job metrics. It may import only the
standard library, pydantic, redis/rq, httpx, Pillow, prometheus-client and itself: never fastapi,
starlette or uvicorn, never torch, diffusers or transformers, never `app.api`, `app.cli` or `worker`."""

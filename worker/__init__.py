"""The GPU side: one long-lived process per GPU running RQ jobs. Resident pipelines, model loading
(hub, local, single file, the built-in models), a fresh scheduler per job, prompt weighting, the
engine, batching, and the job entry point `worker.tasks.run_request`.

It may import `app.core` (the job spec, Redis names, lifecycle, settings) and the GPU stack; never
`app.api`, `app.cli` or a web framework (fastapi, starlette, uvicorn)."""

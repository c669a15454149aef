"""The HTTP API: the FastAPI app factory, routes, request-body parsing, authentication dependencies,
the one error handler, submission (body -> charged, queued request) and the `/metrics` exporter.

It may import `app.core` and web libraries; never `worker` or torch (an API replica runs without
a GPU stack), never `app.cli`."""

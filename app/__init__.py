"""sdxl-img2img, the service side: `core/` (the request-state core shared with the worker), `api/`
(the HTTP face) and `cli/` (the `sdxl-img2img` command). The GPU side is the top-level `worker/`.

What may import what is enforced by import-linter (`[tool.importlinter]` in pyproject.toml, run by
`make test`): core imports neither a web framework nor torch; api and worker never import each
other; only cli imports both."""

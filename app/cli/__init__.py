"""The `sdxl-img2img` command line: one module per command (`up`, `api`, `worker`, `keys`,
`generate`, `models`), each exposing `register(subparsers)`.

The only part that may import both sides (`app.api` and `worker`); it imports them inside command
handlers, so `sdxl-img2img --help` loads neither torch nor fastapi."""

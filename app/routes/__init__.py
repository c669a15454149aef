"""HTTP routes, one module per concern; `app.main.create_app` wires them together."""

"""HTTP routes, one module per concern; `app.api.app_factory.create_app` wires them together."""

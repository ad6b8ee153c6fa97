"""The monitoring REST API (the specification's ``/api/checkpoints/...`` paths)."""

from worker_app.api.app import build_server, create_app, serve

__all__ = ["build_server", "create_app", "serve"]

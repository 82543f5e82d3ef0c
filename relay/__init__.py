"""upload-relay: a streaming upload relay that inspects what passes through it."""

from __future__ import annotations

from typing import Any

__all__ = ["RelayApp", "Route", "Settings", "__version__", "create_app"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so `python -m relay.sink` and the sans-IO core don't pull in the whole server.
    if name in ("RelayApp", "create_app"):
        from relay import app

        return getattr(app, name)
    if name in ("Route", "Settings"):
        from relay import settings

        return getattr(settings, name)
    raise AttributeError(f"module 'relay' has no attribute {name!r}")

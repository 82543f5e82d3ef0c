"""The dashboard at /_relay/ui/: a static page (relay/ui/static/, relay/ui/pages/) and its routes."""

from __future__ import annotations

from relay.ui.routes import create_ui_app

__all__ = ["create_ui_app"]

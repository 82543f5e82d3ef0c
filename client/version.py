"""The client's version: the installed `upload-relay` distribution's, or the source tree's when not installed."""

from __future__ import annotations

from importlib import metadata

__all__ = ["DISTRIBUTION", "FALLBACK_VERSION", "version"]

DISTRIBUTION = "upload-relay"
# Kept equal to pyproject.toml's version; used only when the package runs from a tree that is not installed.
FALLBACK_VERSION = "0.1.0"


def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return FALLBACK_VERSION

"""Where resumable uploads' bytes live: the `Spool` protocol (base.py) and its implementations."""

from __future__ import annotations

from relay.spool.base import Spool, SpoolDataLost, SpoolError, SpoolWriter
from relay.spool.disk import DiskSpool

__all__ = ["DiskSpool", "Spool", "SpoolDataLost", "SpoolError", "SpoolWriter"]

"""libc calls Python's `os` module does not offer (tee, fallocate, sync_file_range), loaded once through ctypes.

ctypes releases the GIL around each call. A caller gets None where the call is missing (not Linux, no libc, an
old libc) and keeps a fallback for that case; errors are read from ctypes' errno (`use_errno=True`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

__all__ = ["libc_function"]


def libc_function(name: str, argtypes: list[Any], restype: Any = ctypes.c_int) -> Any | None:
    """libc's `name` with its C signature, or None where there is no such call."""
    library = ctypes.util.find_library("c")
    if not library or not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(library, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = restype
    return function

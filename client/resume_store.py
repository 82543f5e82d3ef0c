"""Where `relay-upload --resumable` remembers its uploads between runs, so a killed run can go on where it stopped.

Theory of operation:

* One small JSON file per upload under `$XDG_CACHE_HOME/relay-upload/` (default `~/.cache/relay-upload/`),
  named by the sha256 of its key: the destination URL and the file's size, mtime (ns) and the sha256 of its
  first MiB. A file that was edited gets another key, so a stale upload is never resumed with other bytes
  (the relay's X-Upload-Sha256 is checked against the whole file at the end anyway).
* The entry is written once the upload exists on the relay (after creation, before the first byte) and is
  removed when the upload completed or the relay no longer knows it. Writes are atomic (a temporary file
  renamed into place), so a run killed mid-write leaves the old entry or the new one, never half of one.
* The cache is only a hint: an unreadable or malformed entry is ignored (a new upload is created): not JSON,
  nested too deep for the parser, or any field missing or of another type.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["FINGERPRINT_BYTES", "ResumeKey", "ResumeStore", "StoredUpload", "default_directory", "fingerprint"]

# How much of the file's head goes into the key: cheap to read, and tells apart files of the same size.
FINGERPRINT_BYTES = 1024 * 1024


def default_directory() -> Path:
    """`$XDG_CACHE_HOME/relay-upload`, or `~/.cache/relay-upload` when it is unset or not absolute (XDG spec)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "relay-upload"


@dataclass(frozen=True)
class ResumeKey:
    """What identifies one upload of one file to one destination."""

    destination: str
    size: int
    mtime_ns: int
    head_sha256: str

    @property
    def name(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32] + ".json"


def fingerprint(path: str, destination: str) -> ResumeKey:
    """The key of `path` going to `destination` (reads the first MiB; call it off the event loop)."""
    with open(path, "rb") as handle:
        st = os.fstat(handle.fileno())
        head = handle.read(FINGERPRINT_BYTES)
    return ResumeKey(destination, st.st_size, st.st_mtime_ns, hashlib.sha256(head).hexdigest())


@dataclass(frozen=True)
class StoredUpload:
    """An upload created on the relay and not completed yet."""

    upload_url: str
    protocol: str
    path: str
    destination: str
    size: int


def _entry(data: object) -> StoredUpload | None:
    """The entry `data` holds, or None unless every field is there with its type (strings, a size >= 0)."""
    if not isinstance(data, dict):
        return None
    strings = [data.get(name) for name in ("upload_url", "protocol", "path", "destination")]
    size = data.get("size")
    if not all(isinstance(value, str) for value in strings):
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return None
    upload_url, protocol, path, destination = (str(value) for value in strings)
    return StoredUpload(upload_url, protocol, path, destination, size)


class ResumeStore:
    """The directory of entries; every method is best effort (the cache must never fail an upload)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory if directory is not None else default_directory()

    def load(self, key: ResumeKey) -> StoredUpload | None:
        try:
            data = json.loads((self.directory / key.name).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):  # RecursionError: deeply nested brackets
            return None
        return _entry(data)

    def save(self, key: ResumeKey, entry: StoredUpload) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
        except OSError:
            return
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({**asdict(entry), "key": asdict(key)}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.directory / key.name)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    def remove(self, key: ResumeKey) -> None:
        with contextlib.suppress(OSError):
            (self.directory / key.name).unlink()

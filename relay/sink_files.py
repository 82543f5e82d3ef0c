"""Where relay-sink puts what it receives: one request body parsed, hashed and written to temporary files, then
placed under the store all or nothing (relay/sink.py's Rule 1).

Theory of operation
-------------------
`StoredUpload` is one request body on relay-sink's worker thread (the event loop never touches a file): it feeds
multipart bodies through `relay.core.multipart`, keeps text fields in memory (capped: `FieldTooLarge`), and
streams each file into `DIR/.tmp` with its size and sha256 (`StoredFile`). `commit` moves the files to
`DIR/<request id>/<name>` with `place` (hard link then unlink: an existing file is never overwritten, a clash
gets a `-1`, `-2`... suffix); `discard` removes every temporary file. With no directory (--discard) only sizes
and hashes are kept. Every method runs on the worker thread, never two at once for one upload.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from relay.core.multipart import MultipartReader, PartHeaders

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = ["MAX_FIELDS_SIZE", "MAX_FIELD_SIZE", "FieldTooLarge", "StoredUpload", "add_value", "sanitize_filename"]

MAX_FIELD_SIZE = 1024 * 1024
"""Largest text field (a multipart part without a filename)."""
MAX_FIELDS_SIZE = 16 * 1024 * 1024
"""Most text-field bytes in one request."""
MAX_FILENAME_BYTES = 200
_UNSAFE = re.compile(r'[<>:"|?*]')


class FieldTooLarge(Exception):
    """A text field over MAX_FIELD_SIZE, or all fields over MAX_FIELDS_SIZE."""


def sanitize_filename(name: str | None, fallback: str) -> str:
    """A safe single path component: basename only, no control characters, no leading dots, length-capped."""
    if not name:
        return fallback
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C"))
    name = _UNSAFE.sub("_", name).strip().lstrip(".").strip()
    if not name:
        return fallback
    if len(name.encode()) > MAX_FILENAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        if not dot or not stem or len(ext.encode()) > 16:
            stem, ext = name, ""
        keep = MAX_FILENAME_BYTES - len(ext.encode()) - (1 if ext else 0)
        stem = stem.encode()[:keep].decode(errors="ignore")
        name = f"{stem}.{ext}" if ext else stem
    return name


class StoredFile:
    """One file being received: size, sha256 and (unless discarding) its temporary file."""

    def __init__(self, temp_dir: Path | None, field: str | None, filename: str | None, content_type: str | None):
        self.field, self.filename, self.content_type = field, filename, content_type
        self.size = 0
        self.sha: _Hash = hashlib.sha256()
        self.temp: Path | None = None
        self.fh: BinaryIO | None = None
        self.stored_as: str | None = None
        if temp_dir is not None:
            self.temp = temp_dir / f"{uuid.uuid4().hex}.part"
            self.fh = open(self.temp, "xb")  # closed by close() or discard()

    def write(self, data: memoryview | bytes) -> None:
        self.size += len(data)
        self.sha.update(data)
        if self.fh is not None:
            self.fh.write(data)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    def discard(self) -> None:
        self.close()
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)
            self.temp = None

    def describe(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "filename": self.filename,
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha.hexdigest(),
            "stored_as": self.stored_as,
        }


class StoredUpload:
    """One request body. Every method runs in a worker thread, never two at once for one upload."""

    def __init__(
        self,
        directory: Path | None,
        request_id: str,
        raw_name: str,
        boundary: bytes | None,
        content_type: str | None,
    ) -> None:
        self.directory = directory
        self.temp_dir = directory / ".tmp" if directory is not None else None
        self.request_id = request_id
        self.raw_name = raw_name
        self.content_type = content_type
        self.bytes = 0
        self.files: list[StoredFile] = []
        self.fields: dict[str, str | list[str]] = {}
        self._fields_size = 0
        self._current: StoredFile | None = None
        self._field: tuple[str, bytearray] | None = None
        self._reader: MultipartReader | None = None
        if boundary is not None:
            self._reader = MultipartReader(
                boundary, on_part_begin=self._part_begin, on_part_data=self._part_data, on_part_end=self._part_end
            )

    def start(self) -> None:
        if self.temp_dir is not None:
            self.temp_dir.mkdir(parents=True, exist_ok=True)
        if self._reader is None:
            self._current = StoredFile(self.temp_dir, None, None, self.content_type)
            self.files.append(self._current)

    def feed_many(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.feed(chunk)

    def feed(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        if self._reader is not None:
            self._reader.write(chunk)
        elif self._current is not None:
            self._current.write(chunk)

    def finish(self) -> None:
        """Validate the end of the body and move every file into place (all or nothing)."""
        if self._reader is not None:
            self._reader.close()
        for file in self.files:
            file.close()
        if self.directory is not None:
            self._commit(self.directory)

    def abort(self) -> None:
        for file in self.files:
            file.discard()

    def _commit(self, directory: Path) -> None:
        target = directory / self.request_id
        created = not target.exists()
        target.mkdir(exist_ok=True)
        placed: list[Path] = []
        try:
            for index, file in enumerate(self.files):
                if file.filename is None and file.field is None:
                    name = sanitize_filename(self.raw_name, "body.bin")
                else:
                    name = sanitize_filename(file.filename, f"file-{index}.bin")
                dest = place(file.temp, target, name)
                placed.append(dest)
                file.stored_as = f"{self.request_id}/{dest.name}"
                file.temp = None
        except BaseException:
            for dest in placed:
                dest.unlink(missing_ok=True)
            if created:
                try:
                    target.rmdir()
                except OSError:
                    pass
            raise

    # MultipartReader callbacks

    def _part_begin(self, headers: PartHeaders) -> None:
        if headers.filename is not None:
            self._current = StoredFile(self.temp_dir, headers.field, headers.filename, headers.content_type)
            self.files.append(self._current)
        else:
            self._current = None
            self._field = (headers.field or "", bytearray())

    def _part_data(self, data: memoryview) -> None:
        if self._current is not None:
            self._current.write(data)
        elif self._field is not None:
            value = self._field[1]
            self._fields_size += len(data)
            if len(value) + len(data) > MAX_FIELD_SIZE:
                raise FieldTooLarge(f"field {self._field[0]!r} is larger than {MAX_FIELD_SIZE} bytes")
            if self._fields_size > MAX_FIELDS_SIZE:
                raise FieldTooLarge(f"text fields exceed {MAX_FIELDS_SIZE} bytes in all")
            value += data

    def _part_end(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        elif self._field is not None:
            name, value = self._field
            add_value(self.fields, name, value.decode("utf-8", errors="replace"))
            self._field = None


def place(temp: Path | None, target: Path, name: str) -> Path:
    """Move `temp` to `target/name` without overwriting anything; return where it went."""
    assert temp is not None
    stem, dot, ext = name.rpartition(".")
    if not stem:
        stem, dot, ext = name, "", ""
    for n in range(10_000):
        dest = target / (name if n == 0 else f"{stem}-{n}{dot}{ext}")
        try:
            os.link(temp, dest)
        except FileExistsError:
            continue
        except OSError:  # no hard links on this filesystem
            if dest.exists():
                continue
            os.rename(temp, dest)
            return dest
        temp.unlink()
        return dest
    raise FileExistsError(f"no free name for {name!r} in {target}")


def add_value(mapping: dict[str, str | list[str]], key: str, value: str) -> None:
    old = mapping.get(key)
    if old is None:
        mapping[key] = value
    elif isinstance(old, list):
        old.append(value)
    else:
        mapping[key] = [old, value]

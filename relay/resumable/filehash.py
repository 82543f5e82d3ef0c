"""A running sha256 per resumable upload: each append's bytes hashed as they go into the spool.

Theory of operation
-------------------
With the default `--digest sha256` the relay reports the file's sha256 once the upstream has it. For an upload
sent in many appends, the completing append used to hash every spooled byte again while it forwarded them: about
0.9 s per GiB on the append the client waits for (benchmarks/RESULTS.md, run 11: the 16 MiB appends row). Here
each append hashes its own bytes while they arrive (the relay's hash worker, relay/hashing.py), so the completing
forward starts from the hash of the spooled prefix and hashes only what is new.

The hash lives in this process's memory only (hashlib objects cannot be saved), so it is a shortcut, never a
source of truth: whenever it might not cover exactly the spool's first bytes, it is dropped and the forward
hashes the spool as before.

Rules:
1. `begin(id, start)` hands an append the upload's hash only if it covers exactly the bytes before `start`
   (a fresh one when `start` is 0), and takes it out of the table: two appends never share one hash object.
   An append that starts elsewhere (after a relay restart, or after appends on another relay) gets None.
2. The append feeds the hash exactly the chunks it hands the spool (relay/resumable/live.py), so the hash covers
   `start + written` bytes. `end(id, hash, covered, offset)` puts it back only when the upload's offset, as
   decided and saved, is that count: a checksum failure (460) or a discarded append drops it.
3. `take(id, spooled)` gives the completing forward the hash of the first `spooled` bytes (or None), wrapped as
   `PrefixHashed`: fed the whole file again (the forward reads its body from the spool), it drops those bytes
   and hashes only the rest; a spliced forward asks `rest_hash()` and never reads the prefix at all.
4. At most MAX_UPLOADS hashes are kept (the oldest go first): a dropped one costs a re-hash, nothing else.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from relay.hashing import direct_hash, new_hash

__all__ = ["MAX_UPLOADS", "PrefixHashed", "RunningHashes"]

MAX_UPLOADS = 4096
log = logging.getLogger("relay.resumable")


class RunningHashes:
    """Upload id -> (bytes covered, sha256 of them), for uploads whose next append may come to this relay."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled  # `--digest none`: nothing is hashed, nothing kept
        self._table: OrderedDict[str, tuple[int, Any]] = OrderedDict()

    def begin(self, upload_id: str, start: int) -> Any | None:
        """Rule 1: the hash this append continues, or None."""
        if not self.enabled:
            return None
        covered, digest = self._table.pop(upload_id, (0, None))
        if start == 0:
            return new_hash("sha256")
        return digest if digest is not None and covered == start else None

    def end(self, upload_id: str, digest: Any | None, covered: int, offset: int | None) -> None:
        """Rule 2: keep the hash for the next append when the saved offset is what it covers."""
        if digest is None or offset != covered:
            return
        self._table[upload_id] = (covered, digest)
        self._table.move_to_end(upload_id)
        while len(self._table) > MAX_UPLOADS:  # Rule 4
            self._table.popitem(last=False)

    def take(self, upload_id: str, spooled: int) -> PrefixHashed | None:
        """Rule 3: the completing forward's head start, if the hash covers exactly the spooled bytes."""
        covered, digest = self._table.pop(upload_id, (0, None))
        if digest is None or not spooled or covered != spooled:
            return None
        log.debug("resumable %s: sha256 of the %d spooled bytes carried over from its appends", upload_id, spooled)
        return PrefixHashed(digest, spooled)

    def drop(self, upload_id: str) -> None:
        self._table.pop(upload_id, None)


class PrefixHashed:
    """A sha256 that already holds a file's first `skip` bytes: `update` ignores them when fed again."""

    def __init__(self, digest: Any, skip: int) -> None:
        self._digest = digest
        self._skip = skip

    def update(self, data: bytes | memoryview, /) -> None:
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            if dropped == len(data):
                return
            data = memoryview(data)[dropped:]
        self._digest.update(data)

    def rest_hash(self) -> Any:
        """For a thread that hashes the rest itself (relay/resumable/spliced.py): the prefix will not be fed, and
        the hashlib object to update is returned (every queued update applied, relay/hashing.py)."""
        self._skip = 0
        self._digest = direct_hash(self._digest)
        return self._digest

    def hexdigest(self) -> str:
        return str(self._digest.hexdigest())

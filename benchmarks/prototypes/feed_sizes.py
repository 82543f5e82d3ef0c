"""relay-server that records the size of every chunk `UploadInspector.feed` gets, for sizing multipart_scan.py.

    python benchmarks/prototypes/feed_sizes.py OUT.json relay-server flags...

On SIGUSR1 and at exit writes {"multipart": {size: count}, "raw": {size: count}} to OUT.json. Measurement only:
the wrapper adds a dict update per chunk.
"""

from __future__ import annotations

import atexit
import json
import signal
import sys
from collections import Counter


def main() -> None:
    out = sys.argv.pop(1)
    from relay.core.events import Event
    from relay.core.inspector import UploadInspector

    seen: dict[str, Counter[int]] = {"multipart": Counter(), "raw": Counter()}
    feed = UploadInspector.feed

    def counting_feed(self: UploadInspector, chunk: bytes, now: float) -> list[Event]:
        seen["multipart" if self.is_multipart else "raw"][len(chunk)] += 1
        return feed(self, chunk, now)

    UploadInspector.feed = counting_feed  # type: ignore[method-assign]

    def dump() -> None:
        with open(out, "w") as f:
            json.dump({kind: dict(counts) for kind, counts in seen.items()}, f)

    atexit.register(dump)
    signal.signal(signal.SIGUSR1, lambda signum, frame: dump())
    from relay.cli import main as relay_main

    sys.argv[0] = "relay-server"
    relay_main()


if __name__ == "__main__":
    main()

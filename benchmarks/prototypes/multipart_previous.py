"""relay-server with the multipart reader as it was before Rule 7 (python-multipart scans every byte), for an A/B.

    python benchmarks/prototypes/multipart_previous.py relay-server flags...

`MultipartReader._pass_data` is the reader's own pass over part data; returning the chunk unchanged hands every
byte to the parser, which is the previous reader exactly (tests/core/test_multipart_fastpath.py's PreviousReader).
"""

from __future__ import annotations

import sys


def main() -> None:
    from relay.core.multipart import MultipartReader

    def parser_sees_all(self: MultipartReader, chunk: bytes) -> bytes:
        return chunk

    MultipartReader._pass_data = parser_sees_all  # type: ignore[method-assign]
    from relay.cli import main as relay_main

    sys.argv[0] = "relay-server"
    relay_main()


if __name__ == "__main__":
    main()

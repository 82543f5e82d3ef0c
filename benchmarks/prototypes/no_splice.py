"""relay-server with the zero-copy path switched off, for an A/B beside the relay as submitted (issue 15, run 9).

python benchmarks/prototypes/no_splice.py relay-server flags...
"""

from __future__ import annotations

import sys


def main() -> int:
    import relay.splicewire

    relay.splicewire.SPLICE = False
    from relay.cli import main as relay_main

    sys.argv[0] = "relay-server"
    return relay_main()


if __name__ == "__main__":
    sys.exit(main())

"""relay-server with the hashed splice (tee(2), relay/pipehash.py) switched off, for an A/B beside the relay
with it on (issue 15, run 10): sha256 bodies then take the copying path with the offloaded hash, as before.

python benchmarks/prototypes/no_tee.py relay-server flags...
"""

from __future__ import annotations

import sys


def main() -> int:
    import relay.splicewire

    relay.splicewire.TEE = False
    from relay.cli import main as relay_main

    sys.argv[0] = "relay-server"
    return relay_main()


if __name__ == "__main__":
    sys.exit(main())

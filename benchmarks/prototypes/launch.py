"""Run relay-server with another upstream leg swapped in, for a like-for-like comparison in one benchmark run.

    python benchmarks/prototypes/launch.py benchmarks/prototypes/upstream_httpx.py -- relay-server flags...

The module must offer what relay/upstream.py offers: `Upstream(base_url, timeout=, connect_timeout=)` with
`send(method, raw_target, headers, body, content_length) -> UpstreamResponse` and `aclose()`; the response has
`status`, `headers`, `early`, `body()` and `aclose()`. Example, beside the relay in one run:

    python benchmarks/run.py --sections throughput,small --skip relay-sha256 \\
        --relay "httpx=exec {python} benchmarks/prototypes/launch.py benchmarks/prototypes/upstream_httpx.py \\
                 --port {port} --upstream {upstream} --digest none --max-body-size 0"
"""

from __future__ import annotations

import importlib.util
import sys


def main() -> int:
    path = sys.argv.pop(1)
    spec = importlib.util.spec_from_file_location("prototype_upstream", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import relay.app

    relay.app.Upstream = module.Upstream  # type: ignore[misc]
    from relay.cli import main as relay_main

    sys.argv[0] = "relay-server"
    return relay_main()


if __name__ == "__main__":
    sys.exit(main())

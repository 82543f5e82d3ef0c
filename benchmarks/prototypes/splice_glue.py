"""The server glue of the zero-copy prototype (issue 15), patched into relay-server for one benchmark run.

    python benchmarks/prototypes/splice_glue.py relay-server flags...

Adds the `relay.take_body` extension (relay/zerocopy.py's `take`) to the relay's uvicorn protocol, as
relay/server.py does once adopted: the client socket's descriptor and what uvicorn had buffered of the body,
reading paused and keep-alive off.
"""

from __future__ import annotations

import sys
from typing import Any

from relay.zerocopy import ClientSocket


def take_body(protocol: Any) -> ClientSocket | None:
    cycle = protocol.cycle
    transport = protocol.transport
    if cycle is None or cycle.disconnected or not cycle.more_body or cycle.response_started:
        return None
    if transport.is_closing() or transport.get_extra_info("ssl_object") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    if cycle.waiting_for_100_continue:
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        cycle.waiting_for_100_continue = False
    protocol.flow.pause_reading()
    buffered = bytes(cycle.body)
    cycle.body = bytearray()
    cycle.keep_alive = False
    return ClientSocket(sock.fileno(), buffered)


def install() -> None:
    import relay.protocol

    cls = relay.protocol.HeaderLimitProtocol
    original = cls.on_headers_complete

    def on_headers_complete(self: Any) -> None:
        original(self)
        if self.cycle is not None:
            self.scope["extensions"]["relay.take_body"] = lambda: take_body(self)

    cls.on_headers_complete = on_headers_complete  # type: ignore[method-assign]


def main() -> int:
    install()
    from relay.cli import main as relay_main

    sys.argv[0] = "relay-server"
    return relay_main()


if __name__ == "__main__":
    sys.exit(main())

"""An upstream that reads request bodies at a fixed rate, so an upload stays in flight long enough to watch.

    python -m tests.browser.slow_upstream BYTES_PER_SECOND

Each connection reads its body (Content-Length or chunked) at BYTES_PER_SECOND, then answers
200 {"bytes": N, "sha256": H} and closes. Prints "listening on http://127.0.0.1:PORT" once bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys

TICK = 0.05  # seconds between reads: smooth enough that progress moves every event


class Pacer:
    """Reads at most `rate` bytes a second from `reader`, hashing what it reads."""

    def __init__(self, reader: asyncio.StreamReader, rate: int) -> None:
        self.reader = reader
        self.step = max(1, int(rate * TICK))
        self.digest = hashlib.sha256()
        self.count = 0

    async def take(self, size: int) -> None:
        while size:
            piece = await self.reader.readexactly(min(self.step, size))
            self.digest.update(piece)
            self.count += len(piece)
            size -= len(piece)
            await asyncio.sleep(TICK)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: int) -> None:
    try:
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        pacer = Pacer(reader, rate)
        lines = head.split(b"\r\n")
        length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:")), None)
        if length is not None:
            await pacer.take(length)
        else:  # chunked: size line, data, CRLF ... 0 CRLF CRLF (the relay sends no trailers)
            while size := int((await reader.readline()).split(b";")[0], 16):
                await pacer.take(size)
                await reader.readexactly(2)
            await reader.readline()
        body = json.dumps({"bytes": pacer.count, "sha256": pacer.digest.hexdigest()}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the relay aborted the upload: nothing to answer
    finally:
        writer.close()


async def main(rate: int) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, rate), "127.0.0.1", 0)
    print(f"listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))

"""PROTOTYPE for comparison: the relay's upstream leg on httpx, as shipped until the httptools leg replaced it.

One `Upstream` per configured upstream base URL, each with its own `httpx.AsyncClient` (connection pool),
created and closed by the app's lifespan. Timeouts are idle-style: httpx applies `write` to each socket
write and `read` to each socket read, so a slow but moving upload never times out, while an upstream that
stops accepting bytes or never answers does. `map_upstream_errors` turns httpx failures into the relay's
error tree at this one boundary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpx

from relay.errors import UpstreamFailed, UpstreamTimeout, UpstreamUnavailable

__all__ = ["Upstream", "UpstreamResponse", "map_upstream_errors"]


@contextmanager
def map_upstream_errors() -> Iterator[None]:
    """Translate httpx exceptions into the most specific relay error, chained `from` the cause."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise UpstreamUnavailable(f"could not connect to the upstream: {exc or type(exc).__name__}") from exc
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"the upstream made no progress in time ({type(exc).__name__})") from exc
    except (httpx.TransportError, httpx.StreamError) as exc:
        raise UpstreamFailed(f"the upstream connection broke: {exc or type(exc).__name__}") from exc


class UpstreamResponse:
    """The upstream's answer, headers in hand, body still on the wire."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: list[tuple[bytes, bytes]] = list(response.headers.raw)
        self.early = False  # httpcore is half-duplex: an early answer shows up as a broken write

    async def body(self) -> AsyncIterator[bytes]:
        """The body exactly as upstream sent it (no decompression)."""
        with map_upstream_errors():
            async for chunk in self._response.aiter_raw():
                if chunk:
                    yield chunk

    async def aclose(self) -> None:
        await self._response.aclose()


class Upstream:
    """A connection pool to one upstream base URL."""

    def __init__(self, base_url: str, *, timeout: float, connect_timeout: float) -> None:
        self.base_url = base_url
        base = httpx.URL(base_url)
        self._base = base
        self._base_path = base.raw_path.split(b"?", 1)[0].rstrip(b"/")
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            # No cap on connections: the relay's own --max-concurrent-uploads is the cap; a pool limit here
            # would queue uploads behind each other with their bodies already flowing in.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=30.0),
            follow_redirects=False,
            trust_env=False,
        )

    def url_for(self, raw_target: bytes) -> httpx.URL:
        """Base URL + the client's raw path and query, byte for byte."""
        return self._base.copy_with(raw_path=self._base_path + raw_target)

    async def send(
        self,
        method: str,
        raw_target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: AsyncIterator[bytes],
        content_length: int | None,
    ) -> UpstreamResponse:
        """Stream `body` upstream and return once the response headers are in.

        With `content_length` the body goes with that Content-Length; without it, chunked. An exception
        raised inside `body` propagates out of here and kills the upstream connection mid-body, so the
        upstream never sees a complete request (see the relay's promise in the README).
        """
        if content_length is not None:
            headers = [*headers, (b"content-length", str(content_length).encode())]
        # httpx.Request, not client.build_request: the client's default headers (Accept-Encoding: gzip and
        # friends) must not be added to a request the client never made.
        # The "target" extension makes httpcore write the request target exactly as given: httpx's URL would
        # percent-encode `"`, `<`, `>`, `` ` ``, `{`, `}` and so not forward the target byte for byte.
        request = httpx.Request(
            method,
            self.url_for(raw_target),
            headers=headers,
            content=body,
            extensions={"target": self._base_path + raw_target},
        )
        with map_upstream_errors():
            response = await self._client.send(request, stream=True)
        return UpstreamResponse(response)

    async def aclose(self) -> None:
        await self._client.aclose()

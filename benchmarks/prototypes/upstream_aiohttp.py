"""PROTOTYPE for comparison: the relay's upstream leg on aiohttp (not a dependency: pip install aiohttp).

Measured beside relay/upstream.py in one run (benchmarks/RESULTS.md). Prototype quality: no early-answer
handling, and aiohttp's sock_read timeout runs while the body is still being sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
from yarl import URL

from relay.errors import UpstreamFailed, UpstreamTimeout, UpstreamUnavailable

__all__ = ["Upstream", "UpstreamResponse", "map_upstream_errors"]


@contextmanager
def map_upstream_errors() -> Iterator[None]:
    try:
        yield
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnavailable(f"could not connect to the upstream: {exc}") from exc
    except TimeoutError as exc:
        raise UpstreamTimeout("the upstream made no progress in time") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamFailed(f"the upstream connection broke: {exc or type(exc).__name__}") from exc


class UpstreamResponse:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = [(k.lower(), v) for k, v in response.raw_headers]
        self.early = False

    async def body(self) -> AsyncIterator[bytes]:
        with map_upstream_errors():
            async for chunk in self._response.content.iter_any():
                if chunk:
                    yield chunk

    async def aclose(self) -> None:
        self._response.release()


class Upstream:
    def __init__(self, base_url: str, *, timeout: float, connect_timeout: float) -> None:
        self.base_url = base_url
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def send(self, method, raw_target, headers, body, content_length) -> UpstreamResponse:
        hdrs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
        if content_length is not None:
            hdrs.append(("Content-Length", str(content_length)))
        url = URL(self._base + raw_target.decode("latin-1"), encoded=True)
        with map_upstream_errors():
            resp = await self.session().request(
                method,
                url,
                headers=hdrs,
                data=body,
                allow_redirects=False,
                compress=None,
                chunked=None if content_length is not None else True,
            )
        return UpstreamResponse(resp)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

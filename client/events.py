"""The relay's own view of an upload: its SSE stream (bytes received, each part's sha256) and its registry.

`EventWatcher` subscribes to /_relay/uploads/{id}/events before the upload starts, so no event is missed
(the client picks the id). `ask_why_cut` recovers an early refusal whose answer was lost with a reset.
`compare_parts` checks the relay's per-part sha256 against the client's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Protocol

import httpx

from client.errors import HttpError, NetworkError
from client.target import connect_failure

__all__ = ["ERROR_STATUS", "EventWatcher", "RelayObserver", "ask_why_cut", "compare_parts", "read_capped"]

# An answer is a short JSON document; cap what we keep so a chatty server cannot grow memory.
RESPONSE_LIMIT = 4 * 1024 * 1024


class RelayObserver(Protocol):
    def relay_received(self, nbytes: int, total: int | None) -> None: ...

    def part_verified(self, index: int, ok: bool) -> None: ...


async def read_capped(response: httpx.Response) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_bytes():
        if len(data) < RESPONSE_LIMIT:
            data += chunk[: RESPONSE_LIMIT - len(data)]
    return bytes(data)


def parse_response(content: bytes) -> Any:
    text = content.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def describe_http_error(status: int, response: Any) -> str:
    error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict):
        return f"HTTP {status} {error.get('code', '')}: {error.get('message', '')}".strip()
    if response is None:  # no body (a HEAD's answer, say): the status's reason phrase, not "null"
        try:
            return f"HTTP {status} {HTTPStatus(status).phrase}"
        except ValueError:
            return f"HTTP {status}"
    text = response if isinstance(response, str) else json.dumps(response)
    text = " ".join(text.split())[:200]
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


class EventWatcher:
    """Follows /_relay/uploads/{id}/events: relay-side byte counts and each part's sha256."""

    def __init__(self, client: httpx.AsyncClient, relay: str, upload_id: str, admin_token: str | None) -> None:
        self.relay = relay
        self.url = f"{relay.rstrip('/')}/_relay/uploads/{upload_id}/events"
        self.client = client
        self.headers = {"Accept": "text/event-stream"}
        if admin_token:
            self.headers["Authorization"] = f"Bearer {admin_token}"
        self.parts: list[dict[str, Any]] = []
        self.relay_bytes: int | None = None
        self.terminal = asyncio.Event()
        self._response: httpx.Response | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self, observer: RelayObserver) -> None:
        """Returns once the relay answered with headers, so the upload can start without missing events."""
        # No read timeout: a quiet stream is normal while the relay waits for bytes.
        timeout = httpx.Timeout(connect=10.0, read=None, write=10.0, pool=None)
        request = self.client.build_request("GET", self.url, headers=self.headers, timeout=timeout)
        try:
            self._response = await self.client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise NetworkError(connect_failure(self.relay, exc), before_body=True) from exc
        except httpx.TransportError as exc:
            message = f"could not subscribe to {self.url}: {str(exc) or type(exc).__name__}"
            raise NetworkError(message, before_body=True) from exc
        if self._response.status_code != 200:
            content = await read_capped(self._response)
            await self._response.aclose()
            detail = describe_http_error(self._response.status_code, parse_response(content))
            raise HttpError(f"could not subscribe to relay events: {detail}")
        self._task = asyncio.create_task(self._follow(self._response, observer))

    async def _follow(self, response: httpx.Response, observer: RelayObserver) -> None:
        name, data_lines = "message", []
        try:
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    continue  # keep-alive comment
                if line:
                    key, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if key == "event":
                        name = value
                    elif key == "data":
                        data_lines.append(value)
                    continue
                if data_lines:
                    self._dispatch(name, "\n".join(data_lines), observer)
                name, data_lines = "message", []
        except httpx.HTTPError:
            pass  # the stream is only a witness: losing it must not fail the upload
        finally:
            self.terminal.set()

    def _dispatch(self, name: str, raw: str, observer: RelayObserver) -> None:
        try:
            data = json.loads(raw)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        if isinstance(data.get("bytes"), int):
            self.relay_bytes = data["bytes"]
            observer.relay_received(data["bytes"], data.get("total"))
        if name == "part":
            self.parts.append(data)
        elif name in ("completed", "failed"):
            self.terminal.set()

    async def close(self, wait: float) -> None:
        try:
            await asyncio.wait_for(self.terminal.wait(), wait)
        except TimeoutError:
            pass
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._response is not None:
            await self._response.aclose()


# The relay's own error codes and their statuses (CONTRACT.md, relay-server, "Errors").
ERROR_STATUS = {
    "bad_request": 400,
    "malformed_multipart": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "upload_id_in_use": 409,
    "body_too_large": 413,
    "file_too_large": 413,
    "too_many_files": 413,
    "too_many_uploads": 429,
    "headers_too_large": 431,
    "upstream_unavailable": 502,
    "upstream_failed": 502,
    "upstream_timeout": 504,
}


async def ask_why_cut(
    client: httpx.AsyncClient, relay: str, upload_id: str, admin_token: str | None
) -> tuple[int, dict[str, Any]] | None:
    """Ask the relay's registry why it cut our upload; (status, error answer) or None when it cannot tell.

    An early refusal (413 from the declared Content-Length) comes with `Connection: close`. The relay closes
    while we are still writing; our next write breaks the pipe, the kernel resets the connection and the 413
    sitting in our receive buffer is lost with it (httpcore tries to read it, the socket is already gone).
    The relay remembers the refusal under our upload id, so the answer can be recovered from there.
    """
    url = f"{relay.rstrip('/')}/_relay/uploads/{upload_id}"
    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    for _ in range(5):
        try:
            response = await client.get(url, headers=headers, timeout=5.0)
            state = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        if not isinstance(state, dict):
            return None
        error = state.get("error")
        if isinstance(error, dict) and error.get("code") in ERROR_STATUS:
            answer = {"error": {"code": error["code"], "message": error.get("message", "")}}
            return ERROR_STATUS[error["code"]], answer
        if state.get("state") != "receiving":
            return None
        await asyncio.sleep(0.1)  # the relay may not have recorded the outcome yet
    return None


class Verifiable(Protocol):
    path: str
    size: int | None
    sha256: str | None


def compare_parts(
    files: Sequence[Verifiable], parts: Sequence[dict[str, Any]], raw: bool, observer: RelayObserver
) -> list[tuple[int, dict[str, Any], bool | None]]:
    """Match the relay's file parts to ours in order: (index, the relay's part, match or None when unknown)."""
    # In multipart mode form fields are parts too, but only file parts carry a filename.
    file_parts = list(parts) if raw else [p for p in parts if p.get("filename") is not None]
    verdicts: list[tuple[int, dict[str, Any], bool | None]] = []
    for index, (mine, theirs) in enumerate(zip(files, file_parts, strict=False)):
        reported = theirs.get("sha256")
        if reported is None or mine.sha256 is None:  # the relay runs with --digest none, or we read a part only
            verdicts.append((index, theirs, None))
            continue
        ok = reported == mine.sha256 and theirs.get("size", mine.size) == mine.size
        observer.part_verified(index, ok)
        verdicts.append((index, theirs, ok))
    return verdicts

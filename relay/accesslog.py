"""One access line per request, and the log set-up (`--log-level`, `--log-format text|json`).

Theory of operation
-------------------
`AccessLog` is a pure ASGI wrapper around the whole relay (uploads, `/_relay/` and 404s alike). It wraps the
`receive` and `send` callables and nothing else, so `http.disconnect` and streaming reach the app untouched
(BaseHTTPMiddleware would buffer and hide them):

- `receive`: counts the request-body bytes the app took (what was received, drained bytes included; a body spliced
  socket to socket never passes there: the proxy leaves its count under `scope["extensions"][SPLICED_BYTES]`);
- `send`: notes the status and the `X-Upload-ID` of `http.response.start`.

When the app returns (or raises, or is cancelled), one record goes to the `relay.access` logger at INFO with the
fields in `extra["access"]`: client, method, path, status, bytes, seconds, upload_id, user_agent. A request the
app ended without answering logs status 0 (cancelled, e.g. the drain ran out) or 500 (it raised: uvicorn
answers 500 then). The per-chunk cost is one extra Python call on `receive`.

Formatters: `TextFormatter` writes `ts level logger: message` and, for access records, a fixed field order;
`JsonFormatter` writes one JSON object per line, `ts` and `level` first, the access fields at the top level.
Values that came from the client (path, user agent) are escaped, so a line can never be forged.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from relay.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AccessLog", "AccessRecord", "JsonFormatter", "TextFormatter", "configure_logging", "quiet_lifecycle"]

access_log = logging.getLogger("relay.access")
_QUIET = contextvars.ContextVar("relay_quiet_lifecycle", default=False)


SPLICED_BYTES = "relay.spliced_bytes"  # the same key as relay/splicewire.py's SPLICED_BYTES


@dataclass(slots=True)
class AccessRecord:
    """What one request did, as the access line shows it."""

    client: str
    method: str
    path: str
    status: int = 0
    bytes: int = 0
    seconds: float = 0.0
    upload_id: str = "-"
    user_agent: str = "-"

    def text(self) -> str:
        return (
            f"{self.client} {self.method} {self.path} {self.status} bytes={self.bytes} seconds={self.seconds:.3f} "
            f"upload_id={self.upload_id} ua={json.dumps(self.user_agent)}"
        )


def _printable(raw: bytes) -> str:
    """Client bytes as log text: latin-1, with control characters escaped (no forged lines, no terminal tricks)."""
    text = raw.decode("latin-1")
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else f"\\x{ord(char):02x}" for char in text)


def _record_for(scope: Scope) -> AccessRecord:
    client = scope.get("client")
    raw_path: bytes = scope.get("raw_path") or scope.get("path", "").encode()
    query: bytes = scope.get("query_string", b"")
    agent = next((value for key, value in scope.get("headers", []) if key == b"user-agent"), None)
    return AccessRecord(
        client=f"{client[0]}:{client[1]}" if client else "-",
        method=str(scope.get("method", "-")),
        path=_printable(raw_path + (b"?" + query if query else b"")),
        user_agent=_printable(agent) if agent is not None else "-",
    )


class AccessLog:
    """ASGI wrapper: one `relay.access` record per HTTP request (see the module docstring)."""

    def __init__(self, app: ASGIApp, logger: logging.Logger = access_log) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        record = _record_for(scope)
        started = time.monotonic()

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                record.bytes += len(message.get("body", b""))
            return message

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = int(message["status"])
                for key, value in message.get("headers", []):
                    if key.lower() == b"x-upload-id":
                        record.upload_id = _printable(value)
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except asyncio.CancelledError:
            raise
        except BaseException:
            record.status = record.status or 500  # uvicorn answers 500 when nothing was sent yet
            raise
        finally:
            record.seconds = time.monotonic() - started
            # A spliced body (relay/zerocopy.py) never passes `receive()`: the proxy leaves its count in the scope,
            # the whole body's (bytes received before the splice took over included), hence max().
            spliced = scope.get("extensions", {}).get(SPLICED_BYTES)
            if isinstance(spliced, int):
                record.bytes = max(record.bytes, spliced)
            self.logger.info("%s", record.text(), extra={"access": asdict(record)})


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, then the access fields or the message."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"ts": round(record.created, 6), "level": record.levelname.lower()}
        data["logger"] = record.name
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            data.update(access)
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, separators=(",", ":"))


class _LifecycleFilter(logging.Filter):
    """Drops uvicorn's INFO lifecycle lines from a server running inside `quiet_lifecycle()`: the embedded
    sample upstream shares uvicorn's loggers with the relay, and each line would otherwise show twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not _QUIET.get()


def quiet_lifecycle() -> contextvars.Context:
    """A context to run the embedded upstream's server task in: its INFO lines are dropped."""
    context = contextvars.copy_context()
    context.run(_QUIET.set, True)
    return context


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Every record (relay, uvicorn, access) to stderr, at `level`, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_LifecycleFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())

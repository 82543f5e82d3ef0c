"""Completing a resumable upload: the whole file goes upstream as one request, along a plain upload's path.

Theory of operation
-------------------
A finished upload is forwarded by `ForwardUpload`, a `relay.proxy.Upload` whose request is made up here: a
POST to the raw target the upload was created at, framed as `multipart/form-data` (the metadata as text
fields, then the file part) or as the raw bytes, with a Content-Length. Everything else is the plain upload's
own: the inspector (parts, sha256), the held-back last chunk, the upstream leg, its timeouts and early answers.

Its body (`FileBody`) is, in order: the framing's preamble, the bytes already in the spool, the bytes of the
append that completes the upload *as they arrive* (cut-through: they go to the spool and upstream at once),
and the framing's epilogue. A final upload of tus concatenation has no bytes of its own: its spooled bytes are
its partial uploads', read one after the other (`sources`). One piece of look-ahead means the last file bytes
are handed over only after `on_last` has run: the append's checksum judged, its bytes fsynced and the upload
recorded `forwarding`. So the upstream never holds a complete body that the relay could still lose or refuse;
if anything breaks before, the upstream request is aborted mid-body (the relay's promise).

What the forward tells the world is translated (`emit`): the record's `bytes` stay the upload's offset, the
file part is the upload's `part`, `completed` ends it, and a failure is not terminal (the file is kept for a
retry): `error` holds it, and `answer` hands it to the caller instead of writing it.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from relay.core.digests import DigestChecker
from relay.core.events import Completed, Event, Part
from relay.core.inspector import Hash, UploadInspector
from relay.core.limits import Limits
from relay.errors import RelayError, UpstreamFailed
from relay.protocol import RAW_TARGET
from relay.proxy import Upload
from relay.proxy_context import RelayContext
from relay.settings import Route
from relay.spool.base import Spool, SpoolError
from relay.types import Message, Scope, Send
from relay.zerocopy import SplicedBody

if TYPE_CHECKING:
    from relay.resumable.filehash import PrefixHashed
    from relay.resumable.spliced import CutThrough

__all__ = ["AnswerTranslator", "FileBody", "ForwardUpload", "Framing", "framing"]

Headers = list[tuple[bytes, bytes]]
NO_LIMITS = Limits(max_body_size=None, max_file_size=None, max_files=None)  # checked at creation already
_SAFE_TYPE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$&^_.+-/=; ")


class Framing:
    """How the file goes upstream: Content-Type, and the bytes before and after the file's own."""

    def __init__(
        self, content_type: bytes, preamble: bytes = b"", epilogue: bytes = b"", parts_before: int = 0
    ) -> None:
        self.content_type = content_type
        self.preamble = preamble
        self.epilogue = epilogue
        self.parts_before = parts_before  # form fields before the file part: the file is the body's part N

    def size(self, length: int) -> int:
        return len(self.preamble) + length + len(self.epilogue)


def _quote(text: str) -> str:
    """A form-data name or filename as browsers write it (WHATWG): `"`, CR and LF percent-encoded."""
    return text.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")


def _media_type(value: str | None) -> str:
    """`filetype` from the client's metadata, or application/octet-stream when it is not a plain media type."""
    encoded = (value or "").strip().encode("latin-1", "replace")
    if not encoded or not set(encoded) <= _SAFE_TYPE or b"/" not in encoded:
        return "application/octet-stream"
    return encoded.decode("latin-1")


def framing(metadata: Mapping[str, str], *, route: Route, upload_id: str) -> Framing:
    """The contract's shape: metadata fields first, then the file part `route.resumable_field`; or raw bytes."""
    filetype = _media_type(metadata.get("filetype"))
    if route.resumable_forward == "raw":
        return Framing(filetype.encode("latin-1"))
    boundary = f"relay-{secrets.token_hex(16)}"
    pieces = []
    for key, value in metadata.items():
        if key in ("filename", "filetype"):
            continue
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(key)}"\r\n\r\n'
        pieces.append(head.encode() + value.encode() + b"\r\n")
    filename = metadata.get("filename") or f"{upload_id}.bin"
    pieces.append(
        (
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="{_quote(route.resumable_field)}"; filename="{_quote(filename)}"\r\n'
            f"Content-Type: {filetype}\r\n\r\n"
        ).encode()
    )
    content_type = f"multipart/form-data; boundary={boundary}".encode()
    epilogue = f"\r\n--{boundary}--\r\n".encode()
    return Framing(content_type, b"".join(pieces), epilogue, parts_before=len(pieces) - 1)


class FileBody:
    """The forward's request body as ASGI messages (a `receive`), one piece ahead (see the module docstring)."""

    def __init__(
        self,
        spool: Spool,
        upload_id: str,
        *,
        spooled: int,
        frame: Framing,
        sources: list[tuple[str, int]] | None = None,
        live: AsyncIterator[bytes] | None = None,
        on_last: Callable[[], Awaitable[None]] | None = None,
        digests: DigestChecker | None = None,
    ) -> None:
        self._spool = spool
        self._upload_id = upload_id
        self._spooled = spooled
        self._sources = sources if sources is not None else [(upload_id, spooled)]  # (upload id, bytes), in order
        self._frame = frame
        self._live = live
        self._on_last = on_last
        self._digests = digests  # a Repr-Digest of the whole file: checked before its last bytes are handed over
        self._pieces = self._generate()
        self._next: bytes | None = None
        self._primed = False

    async def receive(self) -> Message:
        if not self._primed:
            self._primed = True
            self._next = await anext(self._pieces, None)
        current, self._next = self._next, await anext(self._pieces, None)
        return {"type": "http.request", "body": current or b"", "more_body": self._next is not None}

    async def _generate(self) -> AsyncIterator[bytes]:
        if self._frame.preamble:
            yield self._frame.preamble
        digests = self._digests
        if self._spooled:
            async for chunk in self._spooled_bytes():
                if digests is not None:
                    digests.update(chunk)
                yield chunk
        if self._live is not None:
            async for chunk in self._live:
                if digests is not None:
                    digests.update(chunk)
                yield chunk
        if digests is not None:
            digests.verify()  # DigestMismatch aborts the forward: the upstream never holds a complete body
        if self._on_last is not None:
            await self._on_last()
        if self._frame.epilogue:
            yield self._frame.epilogue

    async def _spooled_bytes(self) -> AsyncIterator[bytes]:
        for upload_id, size in self._sources:
            if size:
                async for chunk in self._read(upload_id, size):
                    yield chunk

    async def _read(self, upload_id: str, size: int) -> AsyncIterator[bytes]:
        left = size
        reader = self._spool.read(upload_id, 0)
        try:
            async for chunk in reader:
                piece = chunk[:left]
                left -= len(piece)
                yield piece
                if not left:
                    return
        except SpoolError as exc:  # its data is gone: the upstream request is aborted, never complete
            raise UpstreamFailed(f"the spool could not read upload {upload_id}: {exc}") from exc
        finally:
            close = getattr(reader, "aclose", None)  # an async generator: its file is closed now, not at GC
            if close is not None:
                await close()
        raise UpstreamFailed(f"the spool holds fewer than {size} bytes of upload {upload_id}")


class ForwardUpload(Upload):
    """The plain upload's path for a made-up request (see the module docstring)."""

    def __init__(
        self,
        ctx: RelayContext,
        route: Route,
        scope: Scope,
        body: FileBody,
        send: Send,
        *,
        length: int,
        cut: CutThrough | None = None,
        seed: PrefixHashed | None = None,
    ):
        super().__init__(ctx, route, scope, body.receive, send)
        self.length = length
        self.error: RelayError | None = None
        self.cut = cut  # the completing append may be spliced into the spool and upstream (spliced.py)
        self.seed = seed  # the sha256 of the spooled bytes, hashed by the appends (relay/resumable/filehash.py)
        self.file_index = 0  # which of the inspector's hashes is the file's (Framing.parts_before)
        self.translator: AnswerTranslator | None = None  # the made-up request's `send`, when it keeps the answer
        self._hashes_made = 0

    def outgoing(self) -> AsyncIterator[bytes]:
        """The proxy's body; a spliced one also feeds the spool when this forward is a zero-copy cut-through
        (relay/resumable/spliced.py). Not spliced, the FileBody is iterated: the copying path."""
        body = super().outgoing()
        if self.cut is not None and isinstance(body, SplicedBody):
            return self.cut.wrap(body)
        return body

    @staticmethod
    def scope_for(scope: Scope, *, target: bytes, frame: Framing, length: int, forwarded: Headers) -> Scope:
        """The made-up request: a POST of the framed file to the upload's own target."""
        path = target.split(b"?", 1)[0]
        headers = [
            (b"content-type", frame.content_type),
            (b"content-length", str(frame.size(length)).encode()),
            *forwarded,
        ]
        extensions = {**scope.get("extensions", {}), RAW_TARGET: target}
        made = {
            **scope,
            "method": "POST",
            "path": path.decode("latin-1"),
            "raw_path": path,
            "headers": headers,
            "extensions": extensions,
        }
        return made

    def check_headers(self) -> None:
        """Admission happened on the real request; here only the inspector is built."""
        self.content_length = self.declared_length()
        self.inspector = UploadInspector(
            upload_id=self.upload_id,
            content_type=self.header_text(b"content-type"),
            total=self.content_length,
            limits=NO_LIMITS,
            digest=self.ctx.settings.digest,
            hasher=self.new_body_hash,  # the hash object a spliced body's hash thread updates (splicewire.py)
            progress=self.ctx.settings.progress,
        )

    def new_body_hash(self) -> Hash:
        """The file part's hash starts from the appends' running sha256, when there is one."""
        index, self._hashes_made = self._hashes_made, self._hashes_made + 1
        if self.seed is not None and index == self.file_index:
            self.body_hash = self.seed
            return self.seed
        return super().new_body_hash()

    def begin(self) -> None:  # counted on the real request
        pass

    def count_rejection(self, exc: RelayError) -> None:
        pass  # a refusal at its head (the id's or a cap's lease) is answered, and counted, by the resumable glue

    async def refuse(self, exc: RelayError) -> None:
        self.error = exc  # no `rejected` record of its own: the resumable upload's answer says what came of it

    def end(self) -> None:
        pass

    def emit(self, event: Event) -> None:
        if isinstance(event, Part) and (event.filename is not None or not self.is_multipart()):
            self.ctx.emit(replace(event, bytes=self.length, total=self.length, index=0))
        elif isinstance(event, Completed):
            self.ctx.emit(replace(event, bytes=self.length, total=self.length))
        # started, progress and a failure belong to the resumable upload, which reports them itself

    def is_multipart(self) -> bool:
        return self.inspector is not None and self.inspector.is_multipart

    def fail_quietly(self, exc: RelayError) -> None:
        if not self.finished:
            self.finished = True
            self.error = exc

    async def answer(
        self, exc: RelayError, *, unread_body: bool, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.error = exc  # the caller answers, once it knows what became of the append

    @property
    def file_sha256(self) -> str | None:
        return self.single_file_digest() if self.inspector is not None and self.body_done else None


class AnswerTranslator:
    """A `send` that lets `on_start` turn the upstream's answer into the resumable one (status, headers, and
    whether its body goes to the client).

    An answer passed on is kept for the completing request sent again (the core's `keep_answer`): `passed` is the
    upstream's headers and its body (None: over `cap` bytes, not kept). Where `hold()` says so at the start (a
    completion: the upload is recorded `completed` already), the body is held back until it has ended, `on_end`
    (which records it) runs, and only then does it go out, so that a client that has the answer can have it again,
    even after a crash; a body over the cap goes out as soon as it passes it, and the rest streams. Otherwise (an
    early answer, recorded with the upload's end after the forward) it streams at once and is only noted."""

    def __init__(
        self,
        send: Send,
        on_start: Callable[[int, Headers], Awaitable[tuple[int, Headers, bool]]],
        *,
        cap: int,
        on_end: Callable[[Headers, bytes], Awaitable[None]] | None = None,
        hold: Callable[[], bool] = lambda: True,
    ) -> None:
        self.send, self.on_start, self.on_end, self.cap, self.hold = send, on_start, on_end, cap, hold
        self.keep = True
        self.holding = False
        self.passed: tuple[Headers, bytes | None] | None = None
        self._headers: Headers = []
        self._body: bytearray | None = bytearray()  # None: over the cap, not kept

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._headers = list(message.get("headers", []))
            status, headers, self.keep = await self.on_start(message["status"], list(self._headers))
            self.holding = self.keep and self.on_end is not None and self.hold()
            await self.send({"type": "http.response.start", "status": status, "headers": headers})
        elif self.keep:
            await self._pass(message)
        elif not message.get("more_body", False):
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    def complete(self) -> tuple[Headers, bytes | None] | None:
        """`passed`, or the answer so far when its Content-Length says it is whole: an early answer's end may never
        come through here (the client, which had the whole answer, went away during the lingering drain)."""
        if self.passed is not None or self._body is None:
            return self.passed
        length = next((value for name, value in self._headers if name.lower() == b"content-length"), None)
        if length is not None and length.strip().isdigit() and int(length) == len(self._body):
            return self._headers, bytes(self._body)
        return None

    async def _pass(self, message: Message) -> None:
        more = bool(message.get("more_body", False))
        chunk = message.get("body", b"")
        if self._body is not None:
            self._body += chunk
            if len(self._body) > self.cap:  # too large to keep: the replay goes without it
                held, self._body = bytes(self._body), None
                if self.holding:
                    self.holding = False
                    message = {"type": "http.response.body", "body": held, "more_body": more}
        if not more:
            self.passed = (self._headers, None if self._body is None else bytes(self._body))
        if self.holding and not more and self._body is not None:
            body = bytes(self._body)
            if self.on_end is not None:
                await self.on_end(self._headers, body)
            await self.send({"type": "http.response.body", "body": body, "more_body": False})
        elif not self.holding:
            await self.send(message)

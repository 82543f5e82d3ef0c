"""Header and request-target hygiene: hop-by-hop stripping, X-Forwarded-*, upload ids, dot segments.

Pure functions over ASGI-style header lists (`list[tuple[bytes, bytes]]`, names lower-case as uvicorn
gives them), so they are tested without a server.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

__all__ = [
    "HOP_BY_HOP",
    "Headers",
    "forward_request_headers",
    "forward_response_headers",
    "has_dot_segment",
    "header_value",
    "headers_size",
    "new_upload_id",
    "valid_upload_id",
]

Headers = list[tuple[bytes, bytes]]

# RFC 9110 section 7.6.1 plus the Proxy-* family. Expect is answered by the relay itself (uvicorn sends
# 100 Continue when we first read the body), so forwarding it would ask the upstream for a second one.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"proxy-connection",
        b"expect",
    }
)
_UPLOAD_ID = re.compile(rb"[A-Za-z0-9_-]{1,64}")


def new_upload_id() -> str:
    """128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


def valid_upload_id(value: bytes) -> bool:
    return _UPLOAD_ID.fullmatch(value) is not None  # not match + "$", which accepts a trailing newline


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of `name` (lower-case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def headers_size(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """Bytes the header block took on the wire, near enough: name, ': ', value, CRLF."""
    return sum(len(key) + len(value) + 4 for key, value in headers)


def _connection_tokens(headers: Headers) -> set[bytes]:
    tokens: set[bytes] = set()
    for key, value in headers:
        if key.lower() == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return tokens


def _strip_hop_by_hop(headers: Headers) -> Headers:
    drop = HOP_BY_HOP | _connection_tokens(headers)
    return [(key, value) for key, value in headers if key.lower() not in drop]


def forward_request_headers(
    headers: Headers,
    *,
    peer: str | None,
    scheme: str,
    upload_id: str,
    trust_forwarded: bool,
    strip_authorization: bool,
) -> Headers:
    """The headers the upstream gets: no hop-by-hop, no client Host, fresh X-Forwarded-*, our upload id.

    Host and the body framing (Content-Length or chunked) are the upstream leg's to set.
    """
    drop = {b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-upload-id"}
    if strip_authorization:
        drop.add(b"authorization")
    client_host = header_value(headers, b"host")
    client_xff = [value for key, value in headers if key == b"x-forwarded-for"]
    out = [(key.lower(), value) for key, value in _strip_hop_by_hop(headers) if key.lower() not in drop]
    out = [(key, value) for key, value in out if key != b"content-length"]
    chain = [value.strip() for value in client_xff] if trust_forwarded else []
    if peer:
        chain.append(peer.encode("latin-1"))
    if chain:
        out.append((b"x-forwarded-for", b", ".join(chain)))
    out.append((b"x-forwarded-proto", scheme.encode("latin-1")))
    if client_host:
        out.append((b"x-forwarded-host", client_host))
    out.append((b"x-upload-id", upload_id.encode("ascii")))
    return out


def forward_response_headers(headers: Iterable[tuple[bytes, bytes]], upload_id: str) -> Headers:
    """The upstream's response headers minus hop-by-hop, plus X-Upload-ID."""
    listed = [(key.lower(), value) for key, value in headers]
    out = [(key, value) for key, value in _strip_hop_by_hop(listed) if key != b"x-upload-id"]
    out.append((b"x-upload-id", upload_id.encode("ascii")))
    return out


def has_dot_segment(raw_path: bytes) -> bool:
    """True when the path, percent-decoded once with `\\` read as `/`, has a `.` or `..` segment."""
    decoded = unquote_to_bytes(raw_path).replace(b"\\", b"/")
    return any(segment in (b".", b"..") for segment in decoded.split(b"/"))

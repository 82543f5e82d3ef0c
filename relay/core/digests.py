"""RFC 9530 integrity fields on a request body: parse `Content-Digest` / `Repr-Digest`, check the body.

Theory of operation
-------------------
The glue calls `request_digests(headers)` while it decides from the headers; it returns None (the usual
case: no digest field, nothing more is done per chunk) or a `DigestChecker`. The glue then hands the checker
every body chunk (`update`) and calls `verify()` once the body is complete and before its last held-back
bytes leave for the upstream, so a body whose digest does not match never reaches the upstream complete.
After `verify()` (whether it raised or not), `repr_digest()` is the `Repr-Digest` of what was received.

Rules:

1. Both fields are RFC 8941 Structured Fields Dictionaries (RFC 9530 section 2-3): `sha-256=:<base64>:,
   sha-512=:<base64>:`. Several field lines are one list joined with `,` (RFC 9110 section 5.3). Bad
   syntax anywhere is `BadRequest` (400), answered before the body is read.
2. Only `sha-256` and `sha-512` are checked (the algorithms RFC 9530 registers as "Active"); any other key
   is ignored whatever its value, as RFC 9530 section 5 asks. A known algorithm whose value is not a byte
   sequence of that algorithm's size is `BadRequest`: it can never match, so it is refused before the body.
3. Every known digest given is checked, in both fields: one mismatch is `DigestMismatch` (400).
4. `Repr-Digest` covers the representation, which for a request with a `Content-Encoding` other than
   `identity` is the decoded data the relay never sees: then it is ignored and only `Content-Digest` counts.
5. One hash per algorithm, fed once whatever the number of fields naming it. A caller that computes a
   whole-body sha-256 anyway (the inspector hashes a raw body) names it in `precomputed` and passes the
   digest to `verify`: the body is not hashed twice.
6. `reported` names algorithms to compute even when no field gives them: the relay's answers to a plain upload
   carry `Repr-Digest: sha-256` whatever the client sent (a sha-512 alone included), so the proxy asks for
   sha-256 here; that is computed once too (or taken from `precomputed`). `repr_digest()` prefers sha-256 and
   falls back to sha-512 only for a caller that did not ask for sha-256. No checker is made for a request
   without a known digest: `reported` alone never makes one.
7. `hasher(name)` builds the hash objects (hashlib's names: "sha256", "sha512"); the relay passes one
   that hashes large chunks on a worker thread (relay/hashing.py). Only `update` and `hexdigest` are used.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from relay.core.inspector import Hash
from relay.errors import BadRequest, DigestMismatch

__all__ = [
    "ALGORITHMS",
    "DigestChecker",
    "Expected",
    "format_digest",
    "parse_dictionary",
    "request_digests",
]

# RFC 9530 algorithm key -> (hashlib name, digest size in bytes).
ALGORITHMS: dict[str, tuple[str, int]] = {"sha-256": ("sha256", 32), "sha-512": ("sha512", 64)}
FIELDS = (b"content-digest", b"repr-digest")


@dataclass(frozen=True, slots=True)
class Expected:
    """One digest a request announced: the field it came in, the algorithm key, the digest bytes."""

    field: str
    algorithm: str
    digest: bytes


class DigestChecker:
    """Hashes a body once per algorithm and compares with every digest the request gave (Rules 3, 5)."""

    def __init__(
        self,
        expected: list[Expected],
        *,
        hasher: Callable[[str], Hash] = hashlib.new,
        precomputed: Collection[str] = (),
        reported: Collection[str] = (),
    ) -> None:
        self.expected = expected
        algorithms = dict.fromkeys([*(item.algorithm for item in expected), *reported])  # Rules 5, 6
        self._hashes = {alg: hasher(ALGORITHMS[alg][0]) for alg in algorithms if alg not in precomputed}
        self.actual: dict[str, bytes] = {}  # filled by verify()

    def update(self, chunk: bytes) -> None:
        for sha in self._hashes.values():
            sha.update(chunk)

    def verify(self, precomputed: Mapping[str, bytes] | None = None) -> None:
        """The body is complete: raise DigestMismatch unless every expected digest matches."""
        actual = dict(precomputed or {})
        actual.update((alg, bytes.fromhex(sha.hexdigest())) for alg, sha in self._hashes.items())
        self.actual = actual
        for item in self.expected:
            if actual.get(item.algorithm) != item.digest:
                raise DigestMismatch(f"the body does not match its {item.field} ({item.algorithm})")

    def repr_digest(self) -> bytes | None:
        """`Repr-Digest` of what was received, after verify(): sha-256 when computed, else sha-512 (Rule 6)."""
        for algorithm in ALGORITHMS:
            if algorithm in self.actual:
                return format_digest(algorithm, self.actual[algorithm])
        return None


def format_digest(algorithm: str, digest: bytes) -> bytes:
    return algorithm.encode() + b"=:" + base64.b64encode(digest) + b":"


def request_digests(
    headers: list[tuple[bytes, bytes]],
    *,
    hasher: Callable[[str], Hash] = hashlib.new,
    precomputed: Collection[str] = (),
    reported: Collection[str] = (),
) -> DigestChecker | None:
    """A checker for the digests the request's headers announce, or None when they announce none we know.

    `reported`: algorithms the caller answers with (Rule 6), hashed too when the request has a known digest."""
    expected: list[Expected] = []
    encoded = any(key == b"content-encoding" and value.strip().lower() != b"identity" for key, value in headers)
    for name in FIELDS:
        values = [value for key, value in headers if key == name]
        if not values or (encoded and name == b"repr-digest"):  # Rule 4
            continue
        field = name.decode().title()
        for algorithm, value in parse_dictionary(b",".join(values), field).items():
            if algorithm not in ALGORITHMS:
                continue  # Rule 2: unknown algorithms are ignored
            expected.append(Expected(field, algorithm, _digest_value(field, algorithm, value)))
    if not expected:
        return None
    return DigestChecker(expected, hasher=hasher, precomputed=precomputed, reported=reported)


def _digest_value(field: str, algorithm: str, value: object) -> bytes:
    size = ALGORITHMS[algorithm][1]
    if not isinstance(value, bytes):
        raise BadRequest(f"{field}: {algorithm} must be a byte sequence (:base64:)")
    if len(value) != size:
        raise BadRequest(f"{field}: a {algorithm} digest has {size} bytes, not {len(value)}")
    return value


# -- RFC 8941 (and RFC 9651) Structured Fields: a Dictionary ------------------------------------------------------
# The members' values come back as bytes (a byte sequence), or as a placeholder object for every other item
# type: only byte sequences are ever used, but the whole field must be valid (Rule 1).

_KEY = re.compile(rb"[a-z*][a-z0-9_\-.*]*")
_TOKEN = re.compile(rb"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_NUMBER = re.compile(rb"-?[0-9]{1,15}(?:\.[0-9]{1,3})?")
_BINARY = re.compile(rb":([A-Za-z0-9+/=]*):")
_OWS = b" \t"
OTHER = object()  # any bare item that is not a byte sequence


def parse_dictionary(data: bytes, field: str = "field") -> dict[str, object]:
    """An sf-dictionary's members (later duplicates win, as RFC 8941 section 4.2.2 says); BadRequest if invalid."""
    parser = _Parser(data, field)
    return parser.dictionary()


class _Parser:
    def __init__(self, data: bytes, field: str) -> None:
        self.data = data.strip(b" ")
        self.pos = 0
        self.field = field

    def fail(self, what: str) -> BadRequest:
        return BadRequest(f"{self.field} is not a valid structured field dictionary: {what} at offset {self.pos}")

    def peek(self) -> bytes:
        return self.data[self.pos : self.pos + 1]

    def dictionary(self) -> dict[str, object]:
        members: dict[str, object] = {}
        while self.pos < len(self.data):
            key = self.key()
            if self.peek() == b"=":
                self.pos += 1
                members[key] = self.inner_list() if self.peek() == b"(" else self.bare_item()
            else:
                members[key] = OTHER  # a bare key is Boolean true
            self.parameters()
            self.skip(_OWS)
            if self.pos >= len(self.data):
                break
            if self.peek() != b",":
                raise self.fail("expected ','")
            self.pos += 1
            self.skip(_OWS)
            if self.pos >= len(self.data):
                raise self.fail("trailing ','")
        return members

    def skip(self, chars: bytes) -> None:
        while self.pos < len(self.data) and self.data[self.pos] in chars:
            self.pos += 1

    def match(self, pattern: re.Pattern[bytes], what: str) -> re.Match[bytes]:
        found = pattern.match(self.data, self.pos)
        if found is None:
            raise self.fail(f"expected {what}")
        self.pos = found.end()
        return found

    def key(self) -> str:
        return self.match(_KEY, "a key").group().decode()

    def parameters(self) -> None:
        while self.peek() == b";":
            self.pos += 1
            self.skip(b" ")
            self.key()
            if self.peek() == b"=":
                self.pos += 1
                self.bare_item()

    def inner_list(self) -> object:
        self.pos += 1  # "("
        while True:
            self.skip(b" ")
            if self.peek() == b")":
                self.pos += 1
                return OTHER
            self.bare_item()
            self.parameters()
            if self.peek() not in (b" ", b")"):
                raise self.fail("expected ' ' or ')' in an inner list")

    def bare_item(self) -> object:
        first = self.peek()
        if first == b":":
            encoded = self.match(_BINARY, "a byte sequence").group(1)
            try:
                return base64.b64decode(encoded, validate=True)
            except ValueError:
                raise self.fail("bad base64") from None
        if first == b'"':
            self.string(b'"')
        elif first == b"?":
            self.pos += 1
            if self.peek() not in (b"0", b"1"):
                raise self.fail("expected ?0 or ?1")
            self.pos += 1
        elif first == b"@":  # an RFC 9651 Date
            self.pos += 1
            self.match(re.compile(rb"-?[0-9]{1,15}"), "a date")
        elif first == b"%":  # an RFC 9651 Display String
            self.pos += 1
            if self.peek() != b'"':
                raise self.fail("expected '\"'")
            self.string(b'"', display=True)
        elif first and (first.isdigit() or first == b"-"):
            self.match(_NUMBER, "a number")
        else:
            self.match(_TOKEN, "an item")
        return OTHER

    def string(self, quote: bytes, *, display: bool = False) -> None:
        self.pos += 1
        while self.pos < len(self.data):
            char = self.data[self.pos]
            self.pos += 1
            if char == quote[0]:
                return
            if char == 0x5C and not display:  # backslash: only \" and \\ are escapes
                if self.peek() not in (b'"', b"\\"):
                    raise self.fail("bad escape in a string")
                self.pos += 1
            elif display and char == 0x25 and not re.fullmatch(rb"[0-9a-f]{2}", self.data[self.pos : self.pos + 2]):
                raise self.fail("bad percent-encoding in a display string")
            elif not 0x20 <= char <= 0x7E:
                raise self.fail("a character outside a string's range")
        raise self.fail("unterminated string")

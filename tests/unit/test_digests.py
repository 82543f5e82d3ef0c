"""relay/core/digests.py: the RFC 9530 field parser (a table) and the checker (split at every index)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from relay.core.digests import DigestChecker, format_digest, parse_dictionary, request_digests
from relay.errors import BadRequest, DigestMismatch

BODY = b"hello, digest\r\n--boundary-like\r\n" * 3
SHA256 = hashlib.sha256(BODY).digest()
SHA512 = hashlib.sha512(BODY).digest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


S256 = f"sha-256=:{b64(SHA256)}:"
S512 = f"sha-512=:{b64(SHA512)}:"


# (header value, the algorithms the checker must hold)
GOOD = [
    (S256, ["sha-256"]),
    (S512, ["sha-512"]),
    (f"{S256}, {S512}", ["sha-256", "sha-512"]),
    (f"{S256},{S512}", ["sha-256", "sha-512"]),
    (f"  {S256} \t,\t {S512}  ", ["sha-256", "sha-512"]),
    (f"md5=:{b64(b'x' * 16)}:, {S256}", ["sha-256"]),  # unknown algorithm ignored
    (f'unixsum=123, adler=?1, foo="a \\"q\\"", bar=tok/en:x, baz=(1 2 "x");p=1, {S512}', ["sha-512"]),
    (f'id-sha-256=@1700000000, d=%"caf%c3%a9", n=-1.5, k, {S256};algo=x', ["sha-256"]),
    (f"{S256};a=1;b", ["sha-256"]),
    (f"sha-256=:{b64(b'z' * 32)}:, {S256}", ["sha-256"]),  # a later duplicate wins (RFC 8941 4.2.2)
]
# Structured-field syntax errors, and known algorithms with a value that can never match.
BAD = [
    "sha-256",  # a bare key is Boolean true, not a digest
    "sha-256=:not base64!:",
    f"sha-256=:{b64(SHA256)}",  # unterminated byte sequence
    f"SHA-256=:{b64(SHA256)}:",  # keys are lower case
    f"{S256},",  # trailing comma
    f"{S256};",  # empty parameter
    f"{S256} {S512}",  # missing comma
    f"{S256},,{S512}",
    "sha-256=12",
    'sha-256="abc"',
    f"sha-256=:{b64(SHA256[:31])}:",  # wrong size for sha-256
    f"sha-512=:{b64(SHA256)}:",  # a sha-256 digest given as sha-512
    "sha-256=(:AAAA:)",
    'foo="unterminated',
    'foo="bad \\escape"',
    "foo=(1 2",
    "foo=?2",
    "foo=1234567890123456",  # integers have at most 15 digits
    '%"x"',
    "=abc",
]


@pytest.mark.parametrize(("value", "algorithms"), GOOD)
def test_good_fields(value: str, algorithms: list[str]) -> None:
    checker = request_digests([(b"content-digest", value.encode())])
    assert checker is not None
    assert [item.algorithm for item in checker.expected] == algorithms
    checker.update(BODY)
    checker.verify()


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("field", [b"content-digest", b"repr-digest"])
def test_bad_fields_are_bad_requests(value: str, field: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        request_digests([(field, value.encode())])
    assert type(caught.value) is BadRequest
    assert caught.value.status_code == 400


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"content-type", b"text/plain")],
        [(b"content-digest", b"md5=:AAAAAAAAAAAAAAAAAAAAAA==:, unixsum=3")],
        [(b"content-digest", b"")],
        [(b"want-content-digest", b"sha-256=10")],
    ],
)
def test_no_known_digest_means_no_checker(headers: list[tuple[bytes, bytes]]) -> None:
    assert request_digests(headers) is None


def test_several_lines_and_both_fields_are_all_checked() -> None:
    headers = [(b"content-digest", S256.encode()), (b"content-digest", S512.encode()), (b"repr-digest", S256.encode())]
    checker = request_digests(headers)
    assert checker is not None
    assert [(item.field, item.algorithm) for item in checker.expected] == [
        ("Content-Digest", "sha-256"),
        ("Content-Digest", "sha-512"),
        ("Repr-Digest", "sha-256"),
    ]
    checker.update(BODY)
    checker.verify()
    assert checker.repr_digest() == format_digest("sha-256", SHA256)


def test_one_wrong_digest_among_several_fails() -> None:
    wrong512 = f"sha-512=:{b64(hashlib.sha512(b'other').digest())}:"
    checker = request_digests([(b"content-digest", f"{S256}, {wrong512}".encode())])
    assert checker is not None
    checker.update(BODY)
    with pytest.raises(DigestMismatch, match="sha-512"):
        checker.verify()


def test_repr_digest_ignored_under_a_content_encoding() -> None:
    wrong = f"sha-256=:{b64(b'x' * 32)}:".encode()
    assert request_digests([(b"content-encoding", b"gzip"), (b"repr-digest", wrong)]) is None
    checker = request_digests([(b"content-encoding", b"identity"), (b"repr-digest", wrong)])
    assert checker is not None


def test_only_sha512_answers_sha512() -> None:
    checker = request_digests([(b"repr-digest", S512.encode())])
    assert checker is not None
    checker.update(BODY)
    checker.verify()
    assert checker.repr_digest() == format_digest("sha-512", SHA512)


def test_precomputed_sha256_is_not_hashed_again() -> None:
    made: list[str] = []

    def hasher(name: str) -> hashlib._Hash:
        made.append(name)
        return hashlib.new(name)

    checker = request_digests([(b"content-digest", f"{S256}, {S512}".encode())], hasher=hasher, precomputed=["sha-256"])
    assert checker is not None
    assert made == ["sha512"]
    checker.update(BODY)
    checker.verify({"sha-256": SHA256})
    with pytest.raises(DigestMismatch):
        checker.verify({"sha-256": b"y" * 32})


def test_empty_body() -> None:
    empty = f"sha-256=:{b64(hashlib.sha256(b'').digest())}:"
    checker = request_digests([(b"content-digest", empty.encode())])
    assert checker is not None
    checker.verify()


@pytest.mark.parametrize("algorithm", ["sha-256", "sha-512"])
def test_checker_split_at_every_index(algorithm: str) -> None:
    digest = hashlib.new(algorithm.replace("-", ""), BODY).digest()
    value = format_digest(algorithm, digest)
    for at in range(len(BODY) + 1):
        checker = request_digests([(b"content-digest", value)])
        assert checker is not None
        checker.update(BODY[:at])
        checker.update(BODY[at:])
        checker.verify()
    # One flipped bit anywhere is a mismatch.
    for at in range(len(BODY)):
        flipped = bytearray(BODY)
        flipped[at] ^= 0x01
        checker = request_digests([(b"content-digest", value)])
        assert checker is not None
        checker.update(bytes(flipped[:at]))
        checker.update(bytes(flipped[at:]))
        with pytest.raises(DigestMismatch) as caught:
            checker.verify()
        assert (caught.value.status_code, caught.value.code) == (400, "digest_mismatch")


def test_checker_byte_by_byte() -> None:
    checker = DigestChecker(request_digests([(b"content-digest", S256.encode())]).expected)  # type: ignore[union-attr]
    for byte in BODY:
        checker.update(bytes([byte]))
    checker.verify()


def test_parse_dictionary_returns_byte_sequences() -> None:
    members = parse_dictionary(f"{S256}, x=1".encode())
    assert members["sha-256"] == SHA256
    assert not isinstance(members["x"], bytes)

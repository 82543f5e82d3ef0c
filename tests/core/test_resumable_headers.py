"""relay.core.resumable_headers: every resumable header, good and bad, in each protocol version."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from relay.core.resumable_headers import (
    Checksum,
    Protocol,
    UnsupportedChecksum,
    UnsupportedTusVersion,
    detect_protocol,
    encode_metadata,
    interim_104,
    parse_metadata,
    parse_request,
    parse_sf_boolean,
    problem,
    upload_limit,
)
from relay.errors import BadRequest, RelayError

TUS = [(b"tus-resumable", b"1.0.0")]
V6 = [(b"upload-draft-interop-version", b"6")]
V8 = [(b"upload-draft-interop-version", b"8")]
BY_PROTOCOL: dict[Protocol, list[tuple[bytes, bytes]]] = {"tus": TUS, "ietf-6": V6, "ietf-8": V8}


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def parse(protocol: Protocol, *extra: tuple[bytes, bytes], method: str = "PATCH") -> object:
    return parse_request(method, BY_PROTOCOL[protocol] + list(extra), protocol)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (TUS, "tus"),
        (V6, "ietf-6"),
        (V8, "ietf-8"),
        (V8 + TUS, "ietf-8"),  # the interop header decides: tus-js-client sends only one of them
        ([(b"upload-draft-interop-version", b"5")], None),  # draft -03: not ours, a plain upload
        ([(b"upload-draft-interop-version", b"7")], None),
        ([(b"upload-draft-interop-version", b" 6 ")], "ietf-6"),  # surrounding whitespace is not the value
        ([(b"content-type", b"text/plain")], None),
        ([], None),
    ],
)
def test_detect_protocol(headers: list[tuple[bytes, bytes]], expected: str | None) -> None:
    assert detect_protocol(headers) == expected


@pytest.mark.parametrize("version", [b"0.2.2", b"1.0", b"", b"1.0.0, 0.2.2"])
def test_tus_412_on_other_versions(version: bytes) -> None:
    with pytest.raises(UnsupportedTusVersion) as info:
        parse_request("PATCH", [(b"tus-resumable", version)], "tus")
    assert info.value.status_code == 412
    assert f"Tus-Resumable '{version.decode()}' is not supported" in str(info.value.message)  # text, not b'...'


def test_tus_options_needs_no_version() -> None:
    assert parse_request("OPTIONS", [(b"tus-resumable", b"0.2.2")], "tus").method == "OPTIONS"


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        (b"upload-length", b"0", "upload_length", 0),
        (b"upload-length", b"1073741824", "upload_length", 1 << 30),
        (b"upload-offset", b"42", "upload_offset", 42),
        (b"upload-offset", b" 42 ", "upload_offset", 42),
        (b"content-length", b"7", "content_length", 7),
        (b"upload-defer-length", b"1", "defer_length", True),
        (b"content-type", b"Application/Offset+Octet-Stream; x=1", "content_type", "application/offset+octet-stream"),
    ],
)
def test_tus_good_values(name: bytes, value: bytes, field: str, expected: object) -> None:
    assert getattr(parse("tus", (name, value)), field) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"upload-length", b"-1"),
        (b"upload-length", b"1e3"),
        (b"upload-length", b"+5"),
        (b"upload-length", b"1_000"),
        (b"upload-length", b""),
        (b"upload-length", b"12345678901234567890"),  # 20 digits
        (b"upload-offset", b"0x10"),
        (b"upload-offset", b"1 2"),
        (b"upload-defer-length", b"0"),
        (b"upload-defer-length", b"true"),
        (b"content-length", b"abc"),
    ],
)
def test_tus_bad_values_are_400(name: bytes, value: bytes) -> None:
    with pytest.raises(BadRequest):
        parse("tus", (name, value))


def test_tus_length_and_deferral_together_is_400() -> None:
    with pytest.raises(BadRequest):
        parse("tus", (b"upload-length", b"5"), (b"upload-defer-length", b"1"), method="POST")


def test_method_override_only_on_tus_post() -> None:
    override = (b"x-http-method-override", b"patch")
    assert parse("tus", override, method="POST").method == "PATCH"  # type: ignore[attr-defined]
    assert parse("tus", override, method="GET").method == "GET"  # type: ignore[attr-defined]
    assert parse("ietf-6", override, method="POST").method == "POST"  # type: ignore[attr-defined]


# Upload-Metadata ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("filename " + b64(b"world_domination_plan.pdf").decode(), {"filename": "world_domination_plan.pdf"}),
        ("filename ZA==,is_confidential", {"filename": "d", "is_confidential": ""}),  # the tus spec's example
        ("a YQ==, b Yg==", {"a": "a", "b": "b"}),
        ("name " + b64("résumé ✓".encode()).decode(), {"name": "résumé ✓"}),
        ("empty ", {"empty": ""}),
    ],
)
def test_metadata_good(header: str, expected: dict[str, str]) -> None:
    assert parse_metadata(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "a YQ==,a Yg==",  # duplicate key
        "a,,b",  # empty element
        "a not-base64!",
        "a YQ",  # missing padding
        "a YQ== extra",
        "a " + b64(b"\xff\xfe").decode(),  # not UTF-8
    ],
)
def test_metadata_bad(header: str) -> None:
    with pytest.raises(BadRequest):
        parse_metadata(header)


def test_metadata_round_trip() -> None:
    metadata = {"filename": "a b.txt", "filetype": "text/plain", "flag": ""}
    assert parse_metadata(encode_metadata(metadata)) == metadata


def test_metadata_parsed_for_every_protocol() -> None:
    header = (b"upload-metadata", b"filename " + b64(b"x.bin"))
    for protocol in BY_PROTOCOL:
        assert parse(protocol, header).metadata == {"filename": "x.bin"}  # type: ignore[attr-defined]


# Upload-Checksum ------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5"])
def test_checksum_good(algorithm: str) -> None:
    digest = hashlib.new(algorithm, b"hello").digest()
    request = parse("tus", (b"upload-checksum", algorithm.encode() + b" " + b64(digest)))
    assert request.checksum == Checksum(algorithm, digest)  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", [b"crc32 AAAAAA==", b"SHA1 " + b64(bytes(20)), b"sha512 " + b64(bytes(64)), b""])
def test_checksum_unknown_algorithm_is_400(value: bytes) -> None:
    with pytest.raises(UnsupportedChecksum) as info:
        parse("tus", (b"upload-checksum", value))
    assert info.value.status_code == 400


@pytest.mark.parametrize("value", [b"sha1 " + b64(bytes(19)), b"sha256 !!!", b"md5 " + b64(bytes(20))])
def test_checksum_bad_digest_is_400(value: bytes) -> None:
    with pytest.raises(BadRequest):
        parse("tus", (b"upload-checksum", value))


def test_checksum_ignored_by_the_drafts() -> None:
    assert parse("ietf-8", (b"upload-checksum", b"crc32 x")).checksum is None  # type: ignore[attr-defined]


# IETF: structured fields ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"?1", True), (b"?0", False), (b"?1;a=b", True), (b" ?0 ", False), (b"1", None), (b"true", None), (b"?2", None)],
)
def test_sf_boolean(value: bytes, expected: bool | None) -> None:
    assert parse_sf_boolean(value) is expected


@pytest.mark.parametrize("protocol", ["ietf-6", "ietf-8"])
@pytest.mark.parametrize(("value", "expected"), [(b"?1", True), (b"?0", False)])
def test_upload_complete(protocol: Protocol, value: bytes, expected: bool) -> None:
    assert parse(protocol, (b"upload-complete", value)).upload_complete is expected  # type: ignore[attr-defined]


def test_upload_complete_absent_and_tus() -> None:
    assert parse("ietf-6").upload_complete is None  # type: ignore[attr-defined]
    assert parse("tus", (b"upload-complete", b"?1")).upload_complete is None  # type: ignore[attr-defined]


def test_invalid_upload_complete_is_400_in_v6_and_ignored_in_v8() -> None:
    with pytest.raises(BadRequest):
        parse("ietf-6", (b"upload-complete", b"yes"))
    # -11 §4.1: "Other values MUST cause the entire header field to be ignored."
    assert parse("ietf-8", (b"upload-complete", b"yes")).upload_complete is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", [b"upload-offset", b"upload-length"])
def test_sf_integers(name: bytes) -> None:
    field = name.decode().replace("-", "_")
    assert getattr(parse("ietf-6", (name, b"100")), field) == 100
    assert getattr(parse("ietf-8", (name, b"100;p=1")), field) == 100  # parameters are ignored
    with pytest.raises(BadRequest):
        parse("ietf-6", (name, b"-1"))
    with pytest.raises(BadRequest):
        parse("ietf-6", (name, b"1234567890123456"))  # 16 digits: not an sf-integer
    assert getattr(parse("ietf-8", (name, b"-1")), field) is None
    assert getattr(parse("ietf-8", (name, b"1.5")), field) is None


def test_defer_length_tolerated_in_ietf_mode() -> None:
    # tus-js-client sends Upload-Defer-Length: 1 in its ietf-draft-05 mode when uploadLengthDeferred.
    assert parse("ietf-6", (b"upload-defer-length", b"1"), method="POST").defer_length is True  # type: ignore[attr-defined]


def test_partial_upload_media_type() -> None:
    request = parse("ietf-8", (b"content-type", b"application/partial-upload"))
    assert request.content_type == "application/partial-upload"  # type: ignore[attr-defined]


# The response side ----------------------------------------------------------------------------------


def test_problem_documents_are_the_drafts_examples() -> None:
    assert problem("mismatching-upload-offset", **{"expected-offset": 100, "provided-offset": 200}) == {
        "type": "https://iana.org/assignments/http-problem-types#mismatching-upload-offset",
        "title": "offset from request does not match offset of resource",
        "expected-offset": 100,
        "provided-offset": 200,
    }
    assert problem("completed-upload") == {
        "type": "https://iana.org/assignments/http-problem-types#completed-upload",
        "title": "upload is already completed",
    }
    assert (
        json.loads(json.dumps(problem("inconsistent-upload-length")))["title"]
        == "inconsistent length values for upload"
    )


@pytest.mark.parametrize(
    ("protocol", "max_size", "max_age", "expected"),
    [
        ("ietf-6", None, None, "min-size=0"),
        ("ietf-6", 1000, 60, "max-size=1000,expires=60"),  # -05 calls the lifetime `expires`
        ("ietf-8", 1000, 60, "max-size=1000,max-age=60"),  # renamed in -06
        ("ietf-8", None, 5, "max-age=5"),
        ("ietf-8", None, -3, "max-age=0"),
    ],
)
def test_upload_limit(protocol: Protocol, max_size: int | None, max_age: int | None, expected: str) -> None:
    assert upload_limit(protocol, max_size, max_age) == expected


@pytest.mark.parametrize(("protocol", "version"), [("ietf-6", b"6"), ("ietf-8", b"8")])
def test_interim_104_headers(protocol: Protocol, version: bytes) -> None:
    assert interim_104(protocol, "/resumable/abc", "max-size=10") == (
        (b"Upload-Draft-Interop-Version", version),
        (b"Location", b"/resumable/abc"),
        (b"Upload-Limit", b"max-size=10"),
    )


def test_errors_carry_status_and_code() -> None:
    errors: list[RelayError] = [UnsupportedTusVersion(), UnsupportedChecksum()]
    assert [(e.status_code, e.code) for e in errors] == [(412, "unsupported_version"), (400, "unsupported_checksum")]

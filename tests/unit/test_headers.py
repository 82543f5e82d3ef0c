"""Header and request-target hygiene (relay/headers.py), as pure functions."""

from __future__ import annotations

import pytest

from relay.headers import (
    forward_request_headers,
    forward_response_headers,
    has_dot_segment,
    new_upload_id,
    valid_upload_id,
)

HOP = [
    (b"connection", b"keep-alive, X-Secret-Hop ,x-other"),
    (b"keep-alive", b"timeout=5"),
    (b"te", b"trailers"),
    (b"trailer", b"x-checksum"),
    (b"transfer-encoding", b"chunked"),
    (b"upgrade", b"websocket"),
    (b"proxy-authorization", b"Basic eA=="),
    (b"proxy-authenticate", b"Basic"),
    (b"proxy-connection", b"keep-alive"),
    (b"x-secret-hop", b"1"),
    (b"x-other", b"2"),
]


def forward(headers: list[tuple[bytes, bytes]], **options: object) -> list[tuple[bytes, bytes]]:
    defaults: dict[str, object] = {
        "peer": "10.0.0.7",
        "scheme": "http",
        "upload_id": "up-1",
        "trust_forwarded": False,
        "strip_authorization": False,
    }
    return forward_request_headers(headers, **{**defaults, **options})  # type: ignore[arg-type]


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [key for key, _ in headers]


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    out = forward([*HOP, (b"x-kept", b"yes"), (b"content-type", b"text/plain")])
    assert names(out) == [b"x-kept", b"content-type", b"x-forwarded-for", b"x-forwarded-proto", b"x-upload-id"]


def test_connection_tokens_are_case_insensitive() -> None:
    # Names come lower-case from uvicorn (the module's documented input); the tokens may be in any case.
    out = forward([(b"connection", b"X-Drop, KEEP-ALIVE"), (b"x-drop", b"1"), (b"x-keep", b"2")])
    assert (b"x-keep", b"2") in out
    assert b"x-drop" not in names(out)


def test_host_and_forwarded_headers_are_replaced() -> None:
    out = dict(
        forward(
            [
                (b"host", b"client.example"),
                (b"x-forwarded-for", b"6.6.6.6"),
                (b"x-forwarded-proto", b"gopher"),
                (b"x-forwarded-host", b"evil"),
                (b"x-upload-id", b"x"),
            ],
            scheme="https",
        )
    )
    assert b"host" not in out
    assert out[b"x-forwarded-for"] == b"10.0.0.7"
    assert out[b"x-forwarded-proto"] == b"https"
    assert out[b"x-forwarded-host"] == b"client.example"
    assert out[b"x-upload-id"] == b"up-1"


def test_each_forwarded_header_appears_once() -> None:
    out = forward([(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2"), (b"host", b"h")])
    for name in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-upload-id"):
        assert names(out).count(name) == 1


def test_trusted_forwarded_chain_appends_the_peer() -> None:
    headers = [(b"x-forwarded-for", b" 1.1.1.1, 2.2.2.2 "), (b"x-forwarded-for", b"3.3.3.3")]
    out = dict(forward(headers, trust_forwarded=True))
    assert out[b"x-forwarded-for"] == b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.7"


def test_no_peer_and_no_host() -> None:
    out = dict(forward([], peer=None))
    assert b"x-forwarded-for" not in out and b"x-forwarded-host" not in out
    assert out[b"x-forwarded-proto"] == b"http"


def test_content_length_is_left_to_the_upstream_leg() -> None:
    assert b"content-length" not in names(forward([(b"content-length", b"12")]))


def test_authorization_is_stripped_only_when_asked() -> None:
    headers = [(b"authorization", b"Bearer secret")]
    assert (b"authorization", b"Bearer secret") in forward(headers, strip_authorization=False)
    assert b"authorization" not in names(forward(headers, strip_authorization=True))


def test_response_headers_drop_hop_by_hop_and_set_the_upload_id() -> None:
    upstream = [
        *HOP,
        (b"Content-Type", b"application/json"),
        (b"X-Upload-ID", b"theirs"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"content-length", b"10"),
    ]
    out = forward_response_headers(upstream, "ours")
    assert out == [
        (b"content-type", b"application/json"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"content-length", b"10"),
        (b"x-upload-id", b"ours"),
    ]


@pytest.mark.parametrize(
    "path",
    [
        b"/upload/../x",
        b"/upload/./x",
        b"/upload/a/.",
        b"/upload/a/..",
        b"/upload/%2e%2e/x",
        b"/upload/%2E%2E/x",
        b"/upload/%2e%2E/x",
        b"/upload/.%2e/x",
        b"/upload/%2e/x",
        b"/upload/%2E",
        b"/upload/a\\..\\b",
        b"/upload/a/..%5cb",
        b"/upload/a/..%5Cb",
        b"/upload/%2e%2e%5cetc",
        b"/upload/%2e%2e%2fsecret",
        b"/upload/a%2f..%2fb",
        b"/upload/..\\",
        b"/upload/a/%2e%2e",
    ],
)
def test_dot_segments_in_every_spelling(path: bytes) -> None:
    assert has_dot_segment(path)


@pytest.mark.parametrize(
    "path",
    [
        b"/upload/%252e%252e/x",  # double-encoded: once decoded it is "%2e%2e", not a dot segment
        b"/upload/.../x",
        b"/upload/..../x",
        b"/upload/.hidden",
        b"/upload/a..b/c.d",
        b"/upload/%c0%ae%c0%ae/x",  # overlong UTF-8: decoded once it is two bytes that are not '.'
        b"/upload/%2e%2e%2e",
        b"/upload/..;/x",
        b"/upload/a/b/",
        b"/upload/",
    ],
)
def test_allowed_paths(path: bytes) -> None:
    assert not has_dot_segment(path)


@pytest.mark.parametrize("value", [b"a", b"A-z_0-9", b"x" * 64, b"-", b"_"])
def test_valid_upload_ids(value: bytes) -> None:
    assert valid_upload_id(value)


@pytest.mark.parametrize("value", [b"", b"x" * 65, b"no spaces", b"a.b", b"a/b", b"\xc3\xa9", b"a\r", b" a"])
def test_invalid_upload_ids(value: bytes) -> None:
    assert not valid_upload_id(value)


@pytest.mark.parametrize("value", [b"abc\n", b"x" * 64 + b"\n"])
def test_upload_id_with_a_trailing_newline_is_invalid(value: bytes) -> None:
    assert not valid_upload_id(value)


def test_generated_ids_are_valid_128_bit_and_unique() -> None:
    ids = {new_upload_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(valid_upload_id(value.encode()) and len(value) == 22 for value in ids)

"""Every path spelling we could think of, against the contract's rule, on a real relay in front of the `recorder`.

The rule (../shared/CONTRACT.md, relay-server, Routing): routing comes first (the raw path must start with the
route prefix, case-sensitive, else 404); then the path, percent-decoded once with `\\` read as `/`, must have no `.`
or `..` segment (else 400 `bad_request`); otherwise the raw target is forwarded byte for byte. `/_relay/` is the
admin app's and is never forwarded. `expected()` below is that sentence written out independently of
relay/headers.py, and the recorder's echo of the target it received is the proof of "byte for byte".
"""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.fuzz.common import HEX, decode_once
from tests.hostile.conftest import Exchange, RelayUnderTest, exchange

PREFIX = b"/upload/"


def expected(target: bytes) -> str:
    """'admin', 'not_found', 'bad_request' or 'forward', from the contract's sentence."""
    path = target.split(b"?", 1)[0]
    if path.startswith(b"/_relay/") or path == b"/_relay":
        return "admin"
    if not path.startswith(PREFIX):
        return "not_found"
    segments = decode_once(path).replace(b"\\", b"/").split(b"/")
    return "bad_request" if any(segment in (b".", b"..") for segment in segments) else "forward"


def post(relay: RelayUnderTest, target: bytes, *headers: bytes) -> Exchange:
    head = b"POST " + target + b" HTTP/1.1\r\nHost: x\r\n" + b"".join(h + b"\r\n" for h in headers)
    return exchange(relay.port, head + b"Content-Length: 2\r\nConnection: close\r\n\r\nhi")


def check(relay: RelayUnderTest, target: bytes) -> None:
    result = post(relay, target)
    assert len(result.responses) == 1, result.raw[:300]
    response = result.responses[0]
    body = json.loads(response.body) if response.body.startswith(b"{") else {}
    want = expected(target)
    if want == "forward":
        assert response.status == 200, (target, result.raw[:300])
        assert body["target"] == target.decode("latin-1")  # byte for byte, on the configured upstream
    elif want == "admin":
        assert "target" not in body, "an admin path reached the upstream"
        assert response.status in (401, 404, 405), result.raw[:300]
    else:
        assert response.status == {"bad_request": 400, "not_found": 404}[want], (target, result.raw[:300])
        assert body["error"]["code"] == want
        assert "target" not in body


FORWARDED = [
    # plain, empty and doubled segments, dots that are not dot segments
    "/upload/x",
    "/upload/",
    "/upload//x",
    "/upload///",
    "/upload/x/",
    "/upload/x.",
    "/upload/x..",
    "/upload/.x",
    "/upload/..x",
    "/upload/x/...",
    "/upload/....",
    "/upload/x/.../y",
    "/upload/..%20",
    "/upload/.%20",
    "/upload/%09..",
    # double-encoded dots: decoded once they are '%2e', not '.'
    "/upload/%252e",
    "/upload/%252e%252e",
    "/upload/%252E%252E/x",
    "/upload/%252e%252e%252f_relay/uploads",
    "/upload/%25%32%65",
    "/upload/%%32%65",
    "/upload/%25%32%65%25%32%65/x",
    # backslashes and %5c that do not make a dot segment
    "/upload/a\\b",
    "/upload/%5c",
    "/upload/%5C",
    "/upload/\\",
    "/upload/\\\\x",
    "/upload/a%5c.b",
    # ';' parameters: '..;' is not '..' under the contract (some servers, e.g. Tomcat, disagree: see SECURITY.md)
    "/upload/..;/x",
    "/upload/.;/x",
    "/upload/x;..",
    "/upload/x;p=1/y",
    "/upload/%2e%2e;/x",
    # overlong and look-alike UTF-8 dots and slashes: not '.' once decoded as bytes
    "/upload/%c0%ae/x",
    "/upload/%c0%ae%c0%ae/x",
    "/upload/%C0%AE%C0%AE/",
    "/upload/%e0%80%ae%e0%80%ae/",
    "/upload/%c0%2e",
    "/upload/%u002e%u002e/x",
    "/upload/%ef%bc%8e%ef%bc%8e/",
    "/upload/%c0%af..%c0%af",
    "/upload/%e2%80%a4%e2%80%a4/",
    # broken escapes, NUL, odd but legal characters
    "/upload/%",
    "/upload/%2",
    "/upload/%zz",
    "/upload/%2g",
    "/upload/x%00",
    "/upload/%2e%00",
    "/upload/%00..",
    "/upload/a%2Fb",
    "/upload/%7Euser",
    "/upload/|^'!$&()*+,=:@",
    "/upload/_relay/uploads",
    "/upload/_relay/",
    # queries may contain anything: the rule is about the path
    "/upload/x?../../_relay/uploads",
    "/upload/x?a=%2e%2e/",
    "/upload/x?",
    "/upload/x??",
    "/upload/x?/./.",
    "/upload/x?%2e%2e%2f",
]

REFUSED = [
    "/upload/.",
    "/upload/..",
    "/upload/./",
    "/upload/../",
    "/upload/./x",
    "/upload/../x",
    "/upload/a/./b",
    "/upload/a/../b",
    "/upload/a/..",
    "/upload/a/.",
    "/upload/x/.?q",
    # encoded, mixed case
    "/upload/%2e",
    "/upload/%2E",
    "/upload/%2e%2e",
    "/upload/%2E%2E",
    "/upload/%2e%2E",
    "/upload/%2E%2e",
    "/upload/.%2e",
    "/upload/%2e.",
    "/upload/%2e/x",
    "/upload/x/%2e%2e/y",
    "/upload/x/%2e%2e?q",
    # encoded slashes that make dot segments once decoded
    "/upload/%2e%2e%2f_relay/",
    "/upload/%2e%2e%2f_relay/uploads",
    "/upload/..%2f_relay/uploads",
    "/upload/%2e%2e%2F%2e%2e%2F_relay%2Fuploads",
    "/upload/x%2f..%2fy",
    "/upload/x%2F%2E%2E",
    "/upload/%2f..",
    "/upload/%3f/../x",
    # backslashes, raw and encoded
    "/upload/a\\..\\b",
    "/upload/..\\x",
    "/upload/\\..",
    "/upload/a\\.",
    "/upload/%5c..%5c",
    "/upload/%5C..%5C",
    "/upload/..%5c",
    "/upload/..%5cx",
    "/upload/%2e%2e%5c_relay",
    "/upload/a%5C%2E",
    # ';' that only hides a real segment
    "/upload/;/../x",
    "/upload/x/;/./y",
    # relayed paths aiming at the admin app
    "/upload/../_relay/uploads",
    "/upload/%2e%2e/_relay/uploads",
    "/upload/x/../../_relay/uploads",
    "/upload/..%2F..%2F_relay%2Fuploads",
]

NOT_FOUND = [
    "/upload",
    "/Upload/x",
    "/UPLOAD/x",
    "/upload%2fx",
    "/upload%2Fx",
    "/upload\\x",
    "/upload%5cx",
    "//upload/x",
    "/./upload/x",
    "/../upload/x",
    "/%2e%2e/upload/x",
    "/x/../upload/x",
    "/uploads/x",
    "/uploadx",
    "/%75pload/x",
    "/upload%2f../x",
    "/elsewhere/../../etc/passwd",
    "/_relay%2fuploads",
    "/_relay%2F..%2Fupload/x",
    "/_RELAY/uploads",
    "/",
    "/.",
    "/..",
    "*",
]

ADMIN = [
    "/_relay/../upload/x",
    "/_relay/%2e%2e/upload/x",
    "/_relay/x/../../upload/x",
    "/_relay/uploads/../../upload/x",
    "/_relay/%2e%2e%2fupload%2fx",
    "/_relay/uploads",
    "/_relay/",
]

CASES = (
    [(p, "forward") for p in FORWARDED]
    + [(p, "bad_request") for p in REFUSED]
    + [(p, "not_found") for p in NOT_FOUND]
    + [(p, "admin") for p in ADMIN]
)


@pytest.mark.parametrize(("path", "want"), CASES, ids=[p for p, _ in CASES])
def test_path_spelling(hostile_relay: RelayUnderTest, path: str, want: str) -> None:
    target = path.encode("latin-1")
    assert expected(target) == want  # the list agrees with the rule as written
    check(hostile_relay, target)


@pytest.mark.parametrize(
    "path", ['/upload/a"b', "/upload/a<b>", "/upload/a`b", "/upload/{id}", '/upload/x?q="a"', "/upload/x?q=<a>"]
)
def test_characters_httpx_would_reencode_are_forwarded_unchanged(hostile_relay: RelayUnderTest, path: str) -> None:
    check(hostile_relay, path.encode("latin-1"))


@pytest.mark.parametrize("path", ["/upload/%2e%2e/x", "/upload/../_relay/uploads", "/upload/x", "/upload/..;/x"])
def test_absolute_form_targets_follow_the_same_rule(hostile_relay: RelayUnderTest, path: str) -> None:
    result = post(hostile_relay, b"http://evil.example" + path.encode())
    (response,) = result.responses
    want = expected(path.encode())
    assert response.status == {"forward": 200, "bad_request": 400}[want]
    if want == "forward":
        assert response.json()["target"] == path  # origin-form, on the configured upstream


def test_admin_paths_on_every_method_never_reach_the_upstream(hostile_relay: RelayUnderTest) -> None:
    for method in (b"GET", b"POST", b"PUT", b"PATCH", b"DELETE"):
        for path in (b"/_relay/../upload/x", b"/_relay/uploads", b"/_relay/%2e%2e/upload/x"):
            result = exchange(
                hostile_relay.port,
                method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
            )
            (response,) = result.responses
            assert b'"target"' not in response.body


def test_no_redirect_is_built_from_the_client_host(hostile_relay: RelayUnderTest) -> None:
    result = exchange(hostile_relay.port, b"GET /_relay HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    (response,) = result.responses
    assert "evil.example" not in response.headers.get("location", "")


# -- every combination of the tricky pieces, checked against the rule --------------------------------------

PIECES = [
    ".",
    "..",
    "%2e",
    "%2E",
    "%2e%2e",
    "%2E%2e",
    ".%2e",
    "%252e",
    "%c0%ae",
    "\\",
    "%5c",
    "%5C",
    "/",
    "%2f",
    "%2F",
    ";",
    "a",
    "_relay",
    "%",
    "%25",
    "...",
    "x.",
]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=6), st.sampled_from(["", "?", "?q=1", "?/../x"]))
def test_random_spellings_follow_the_rule(hostile_relay: RelayUnderTest, pieces: list[str], query: str) -> None:
    check(hostile_relay, ("/upload/" + "".join(pieces) + query).encode())


def test_the_reference_has_teeth() -> None:
    assert expected(b"/upload/%2e%2e") == "bad_request"
    assert expected(b"/upload/%252e%252e") == "forward"
    assert expected(b"/upload/a%5c..") == "bad_request"
    assert expected(b"/Upload/..") == "not_found"
    assert set(string.hexdigits.encode()) == set(HEX)

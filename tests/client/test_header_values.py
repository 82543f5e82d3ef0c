"""relay-upload --header: a non-ASCII value goes as UTF-8 bytes; a header that cannot be sent is a usage error.

CONTRACT.md (relay-upload): "Every error is one line on stderr, never a traceback." A `--header 'X-Note: é'`
used to end in a UnicodeEncodeError traceback (httpx encodes str header values as ASCII). Now its value goes as
UTF-8 bytes, as curl sends it, and the upstream sees exactly those bytes: the embedded sink answers with the
headers it got, decoded as latin-1, so encoding them back as latin-1 gives the bytes on the wire. A header name
that is not an HTTP token, or a value holding a control character (CR, LF, NUL...; a tab is fine), cannot be sent
at all: exit 2, one line, before anything is sent. Every case runs the installed `relay-upload` against a real
relay.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.testing import RunningServer, start_relay
from tests.client.test_url_arguments import assert_usage_error, relay_upload

NOTE = "é ü → 日本"  # two- and three-byte UTF-8 sequences, with spaces between them


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A relay with its embedded sink (no --upstream), which answers with the headers it received."""
    server = start_relay("--store", str(tmp_path_factory.mktemp("received")))
    yield server
    server.stop()


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    path = tmp_path / "h.txt"
    path.write_bytes(b"hello\n")
    return path


def upstream_header(answer: dict[str, Any], name: str) -> bytes:
    """The bytes of header `name` as the sink received them (it decodes header values as latin-1)."""
    values = [value for key, value in answer["response"]["headers"] if key == name]
    assert len(values) == 1, answer["response"]["headers"]
    return str(values[0]).encode("latin-1")


@pytest.mark.parametrize(
    "extra",
    [[], ["--events"], ["--raw"], ["--each", "--digest"]],
    ids=["multipart", "events", "raw", "each-digest"],
)
def test_a_non_ascii_value_goes_as_utf8(
    relay: RunningServer, small_file: Path, tmp_path: Path, extra: list[str]
) -> None:
    result = relay_upload(
        str(small_file),
        "--to",
        "/upload/x",
        "--relay",
        relay.url,
        "--header",
        f"X-Note: {NOTE}",
        "--header",
        "X-Plain: ascii",
        "--json",
        *extra,
        cache=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    answer = json.loads(result.stdout.splitlines()[0])
    assert answer["status"] == 200
    assert upstream_header(answer, "x-note") == NOTE.encode("utf-8")
    assert upstream_header(answer, "x-plain") == b"ascii"


def test_a_non_ascii_value_on_a_resumable_upload(relay: RunningServer, small_file: Path, tmp_path: Path) -> None:
    # The relay makes its own request upstream for a resumable upload: here only the way there is checked.
    args = ["--to", "/upload/x", "--relay", relay.url, "--header", f"X-Note: {NOTE}", "--resumable", "--json"]
    result = relay_upload(str(small_file), *args, cache=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["upstream_status"] == 200


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        ("X-Noté: a", "X-Noté"),  # not a token: non-ASCII
        ("X Note: a", "X Note"),  # not a token: a space
        ("X-Note(1): a", "X-Note(1)"),  # not a token: a separator
        ("X-Note: a\rb", "X-Note"),
        ("X-Note: a\nb", "X-Note"),
        ("X-Note: a\x0bb", "X-Note"),
        ("X-Note: a\x01b", "X-Note"),
        ("X-Note: a\x7fb", "X-Note"),
    ],
)
@pytest.mark.parametrize("extra", [[], ["--events"], ["--resumable"]], ids=["plain", "events", "resumable"])
def test_a_header_that_cannot_be_sent_is_a_usage_error(
    relay: RunningServer, small_file: Path, tmp_path: Path, header: str, needle: str, extra: list[str]
) -> None:
    result = relay_upload(
        str(small_file), "--to", "/upload/x", "--relay", relay.url, "--header", header, *extra, cache=tmp_path
    )
    assert_usage_error(result, "--header", needle)


def test_a_tab_inside_a_value_is_sent(relay: RunningServer, small_file: Path, tmp_path: Path) -> None:
    args = ["--to", "/upload/x", "--relay", relay.url, "--header", "X-Note: a\tb", "--json"]
    result = relay_upload(str(small_file), *args, cache=tmp_path)
    assert result.returncode == 0, result.stderr
    assert upstream_header(json.loads(result.stdout), "x-note") == b"a\tb"


def test_form_and_field_values_need_no_check(relay: RunningServer, small_file: Path, tmp_path: Path) -> None:
    # They travel in the multipart body, UTF-8, names HTML5-escaped (client/sources.py): nothing to refuse there.
    args = ["--to", "/upload/x", "--relay", relay.url, "--field", "fé", "--form", "ké=é\r\nz", "--json"]
    result = relay_upload(str(small_file), *args, cache=tmp_path)
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)["response"]
    assert response["fields"] == {"ké": "é\r\nz"}
    assert response["files"][0]["field"] == "fé"

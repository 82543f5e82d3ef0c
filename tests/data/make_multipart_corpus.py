"""Regenerate tests/data/multipart/*.http and their expected *.json.

Each case is built from known part contents, and the expected sizes and sha256 come from those contents, never
from the parser under test. A `.http` file is the request body only; its `.json` gives the request
Content-Type and either the expected `parts` or the expected `error` code.

    python tests/data/make_multipart_corpus.py
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

HERE = Path(__file__).parent / "multipart"
B = b"----relayBoundary7MA4YWxkTrZu0gW"
CT = "multipart/form-data; boundary=" + B.decode()
CRLF = b"\r\n"


def part(disposition: bytes, content: bytes, content_type: bytes | None = None, extra: bytes = b"") -> bytes:
    head = b"Content-Disposition: " + disposition + CRLF
    if content_type is not None:
        head += b"Content-Type: " + content_type + CRLF
    return b"--" + B + CRLF + head + extra + CRLF + content + CRLF


def close() -> bytes:
    return b"--" + B + b"--" + CRLF


def expect(field: str | None, filename: str | None, content_type: str | None, content: bytes) -> dict[str, object]:
    return {
        "field": field,
        "filename": filename,
        "content_type": content_type,
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
    }


CASES: dict[str, tuple[bytes, dict[str, object]]] = {}


def ok(name: str, body: bytes, parts: list[dict[str, object]], content_type: str = CT) -> None:
    CASES[name] = (body, {"content_type": content_type, "parts": parts})


def bad(name: str, body: bytes, content_type: str = CT, error: str = "malformed_multipart") -> None:
    CASES[name] = (body, {"content_type": content_type, "error": error})


def build() -> None:
    rng = random.Random(20261124)
    text = b"hello, relay\r\n"
    blob = bytes(rng.randrange(256) for _ in range(1200))

    ok(
        "simple",
        part(b'form-data; name="title"', b"A title")
        + part(b'form-data; name="file"; filename="a.txt"', text, b"text/plain")
        + close(),
        [expect("title", None, None, b"A title"), expect("file", "a.txt", "text/plain", text)],
    )
    ok(
        "several_files_and_fields",
        part(b'form-data; name="a"', b"1")
        + part(b'form-data; name="f1"; filename="one.bin"', blob, b"application/octet-stream")
        + part(b'form-data; name="b"', b"")
        + part(b'form-data; name="f2"; filename="two.txt"', text * 3, b"text/plain; charset=utf-8")
        + part(b'form-data; name="f3"; filename="three"', blob[:1])
        + close(),
        [
            expect("a", None, None, b"1"),
            expect("f1", "one.bin", "application/octet-stream", blob),
            expect("b", None, None, b""),
            expect("f2", "two.txt", "text/plain; charset=utf-8", text * 3),
            expect("f3", "three", None, blob[:1]),
        ],
    )
    ok(
        "empty_file",
        part(b'form-data; name="file"; filename="empty.dat"', b"", b"application/octet-stream") + close(),
        [expect("file", "empty.dat", "application/octet-stream", b"")],
    )
    ok(
        "empty_filename",
        part(b'form-data; name="file"; filename=""', b"", b"application/octet-stream") + close(),
        [expect("file", "", "application/octet-stream", b"")],
    )
    ok(
        "filename_escaped_quotes",
        part(b'form-data; name="file"; filename="say \\"hi\\"; ok.txt"', text) + close(),
        [expect("file", 'say "hi"; ok.txt', None, text)],
    )
    ok(
        "filename_unicode_raw_utf8",
        part('form-data; name="fichier"; filename="résumé 文件.pdf"'.encode(), blob[:100], b"application/pdf")
        + close(),
        [expect("fichier", "résumé 文件.pdf", "application/pdf", blob[:100])],
    )
    ok(
        "filename_star_only",
        part(b"form-data; name=\"file\"; filename*=UTF-8''na%C3%AFve%20file.txt", text) + close(),
        [expect("file", "naïve file.txt", None, text)],
    )
    ok(
        "filename_and_filename_star",
        part(b'form-data; name="file"; filename="plain.txt"; filename*=UTF-8\'\'fancy.txt', text) + close(),
        [expect("file", "plain.txt", None, text)],
    )
    ok(
        "filename_windows_path",
        part(b'form-data; name="file"; filename="C:\\\\Users\\\\me\\\\report.txt"', text) + close(),
        [expect("file", "report.txt", None, text)],
    )
    tricky = b"".join(
        [
            b"\r\n--" + B[:-1] + b"\r\n",  # boundary minus its last byte
            b"x--" + B + b"\r\n",  # a boundary not at the start of a line is data
            b"\r\n--" + B + b"x\r\n",  # boundary followed by a character
            b"\r\n--" + B + b"-x",  # one hyphen, not two
            b"\r\n--" + B + b"\rx",  # CR without LF
            b"\r\r\n\n\r\n\r\n" * 50,
            b"\r\n-",
        ]
    )
    ok(
        "boundary_like_runs_in_data",
        part(b'form-data; name="file"; filename="tricky.bin"', tricky) + part(b'form-data; name="f"', tricky) + close(),
        [expect("file", "tricky.bin", None, tricky), expect("f", None, None, tricky)],
    )
    ok(
        "crlf_only_file",
        part(b'form-data; name="file"; filename="crlf.txt"', CRLF * 700) + close(),
        [expect("file", "crlf.txt", None, CRLF * 700)],
    )
    ok("zero_parts", close(), [])
    ok(
        "whitespace_preamble",
        b"\r\n\r\n \t\r\n" + part(b'form-data; name="x"', b"y") + close(),
        [expect("x", None, None, b"y")],
    )
    ok(
        "epilogue_ignored",
        part(b'form-data; name="x"', b"y") + close() + b"this is an epilogue\r\n--" + B + b"\r\nnot a part",
        [expect("x", None, None, b"y")],
    )
    ok(
        "closing_without_crlf",
        part(b'form-data; name="x"', b"y") + b"--" + B + b"--",
        [expect("x", None, None, b"y")],
    )
    ok(
        "transport_padding",
        part(b'form-data; name="x"', b"y")[:-2]
        + CRLF
        + b"--"
        + B
        + b" \t \r\n"
        + b'Content-Disposition: form-data; name="z"\r\n\r\nw\r\n'
        + close(),
        [expect("x", None, None, b"y"), expect("z", None, None, b"w")],
    )
    ok(
        "quoted_boundary_param",
        part(b'form-data; name="x"', b"y") + close(),
        [expect("x", None, None, b"y")],
        content_type='Multipart/Form-Data; charset=utf-8; boundary="' + B.decode() + '"',
    )
    headers_64 = b"".join(b"X-H%d: v\r\n" % i for i in range(63))
    ok(
        "sixty_four_headers",
        part(b'form-data; name="x"', b"y", extra=headers_64) + close(),
        [expect("x", None, None, b"y")],
    )

    # Malformed bodies.
    bad("missing_closing_boundary", part(b'form-data; name="x"', b"y"))
    bad("truncated_in_data", part(b'form-data; name="file"; filename="a"', blob)[:-500])
    bad("truncated_in_headers", (b"--" + B + CRLF + b'Content-Disposition: form-data; name="x"'))
    bad("empty_body", b"")
    bad("whitespace_only_body", b"\r\n" * 100)
    bad("wrong_boundary", part(b'form-data; name="x"', b"y") + close(), content_type=CT + "X")
    bad("junk_preamble", b"This is a preamble.\r\n" + part(b'form-data; name="x"', b"y") + close())
    bad("crlf_then_junk_preamble", b"\r\njunk--" + B + b"\r\n" + part(b'form-data; name="x"', b"y") + close())
    bad("huge_crlf_preamble", CRLF * (40 * 1024) + part(b'form-data; name="x"', b"y") + close())
    bad(
        "header_flood",
        part(b'form-data; name="x"', b"y", extra=b"".join(b"X-H%d: v\r\n" % i for i in range(300))) + close(),
    )
    bad("huge_header_line", part(b'form-data; name="x"', b"y", extra=b"X-Big: " + b"a" * 9000 + CRLF) + close())
    bad(
        "huge_header_block",
        part(b'form-data; name="x"', b"y", extra=b"".join(b"X-H%d: " % i + b"b" * 6000 + CRLF for i in range(3)))
        + close(),
    )
    bad("no_content_disposition", b"--" + B + CRLF + b"Content-Type: text/plain\r\n\r\ny\r\n" + close())
    bad(
        "two_content_dispositions",
        part(b'form-data; name="x"', b"y", extra=b'Content-Disposition: form-data; name="z"; filename="f"\r\n')
        + close(),
    )
    bad("header_without_colon", part(b'form-data; name="x"', b"y", extra=b"NoColonHere\r\n") + close())
    bad("lf_line_endings", (part(b'form-data; name="x"', b"y") + close()).replace(CRLF, b"\n"))
    bad("garbage_after_first_delimiter", b"--" + B + b"garbage\r\n" + part(b'form-data; name="x"', b"y") + close())
    bad("bad_padding_after_delimiter", part(b'form-data; name="x"', b"y") + b"--" + B + b"  x\r\n" + close())
    bad("no_boundary_param", close(), content_type="multipart/form-data")
    bad("boundary_too_long", close(), content_type="multipart/form-data; boundary=" + "a" * 71)


def main() -> None:
    build()
    for old in HERE.glob("*.http"):
        old.unlink()
    for old in HERE.glob("*.json"):
        old.unlink()
    for name, (body, expected) in CASES.items():
        (HERE / f"{name}.http").write_bytes(body)
        (HERE / f"{name}.json").write_text(json.dumps(expected, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(CASES)} cases to {HERE}")


if __name__ == "__main__":
    main()

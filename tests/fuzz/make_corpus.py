"""Write the inspector corpus (tests/fuzz/corpus/*.bin) and record today's verdicts in corpus/expected.json.

    python -m tests.fuzz.make_corpus

Each entry is a shape that once broke a multipart parser, or sits on one of the reader's bounds. The verdicts are
a regression baseline: review the diff of expected.json before committing a regenerated one. Inputs the atheris
harness finds interesting can be dropped into corpus/ as `*.bin` (Content-Type line, newline, body) and added here.
"""

from __future__ import annotations

import json

from tests.fuzz.common import CORPUS, read_entry, verdict, write_entry

B = "relay-xyz"
CT = f"multipart/form-data; boundary={B}"
D = b"--" + B.encode()


def part(name: str, data: bytes, filename: str | None = None, extra: bytes = b"") -> bytes:
    fname = f'; filename="{filename}"' if filename is not None else ""
    head = f'\r\nContent-Disposition: form-data; name="{name}"{fname}\r\n'.encode()
    return D + head + extra + b"\r\n" + data + b"\r\n"


END = D + b"--\r\n"
FILE = part("file", b"hello\r\n--not-a-boundary\r\n", "a.txt", b"Content-Type: text/plain\r\n")

ENTRIES: dict[str, tuple[str | None, bytes]] = {
    "raw-empty": (None, b""),
    "raw-binary": ("application/octet-stream", bytes(range(256)) * 4),
    "raw-looks-multipart": ("text/plain", FILE + END),
    "one-file": (CT, FILE + END),
    "two-files-and-a-field": (CT, part("note", b"hi") + FILE + part("f2", b"\x00\xff" * 50, "b.bin") + END),
    "no-parts": (CT, END),
    "quoted-boundary": (f'multipart/form-data; boundary="{B}"', FILE + END),
    "boundary-with-space": (
        'multipart/form-data; boundary="a b"',
        b'--a b\r\nContent-Disposition: form-data; name="x"\r\n\r\nv\r\n--a b--\r\n',
    ),
    "boundary-71-chars": ("multipart/form-data; boundary=" + "x" * 71, FILE + END),
    "no-boundary": ("multipart/form-data", FILE + END),
    "content-type-param-flood": (CT + ";" + "a=b;" * 300, FILE + END),  # CVE-2024-24762 shape
    "crlf-preamble": (CT, b"\r\n\r\n  \t" + FILE + END),
    "junk-preamble": (CT, b"junk\r\n" + FILE + END),  # CVE-2024-53981 / CVE-2026-40347 shapes
    "preamble-at-bound": (CT, b"\r\n" * 32768 + FILE + END),
    "preamble-over-bound": (CT, b"\r\n" * 32768 + b" " + FILE + END),
    "epilogue-junk": (CT, FILE + END + b"anything at all\r\n--" + B.encode() + b"\r\n"),
    "truncated-in-data": (CT, FILE[:-5]),
    "truncated-before-close": (CT, FILE),
    "close-without-crlf": (CT, FILE + D + b"--"),
    "single-dash-close": (CT, FILE + D + b"-\r\n"),
    "transport-padding": (CT, D + b' \t\r\nContent-Disposition: form-data; name="x"\r\n\r\nv\r\n' + END),
    "no-content-disposition": (CT, D + b"\r\nContent-Type: text/plain\r\n\r\nv\r\n" + END),
    "two-content-dispositions": (
        CT,
        D + b'\r\nContent-Disposition: form-data; name="a"\r\n'
        b'Content-Disposition: form-data; name="b"\r\n\r\nv\r\n' + END,
    ),
    "two-content-types": (CT, part("a", b"v", "a", b"Content-Type: a/b\r\nContent-Type: c/d\r\n") + END),
    "filename-star-only": (
        CT,
        D + b"\r\nContent-Disposition: form-data; name=\"f\"; filename*=UTF-8''%e2%82%ac.txt\r\n\r\ndata\r\n" + END,
    ),
    "empty-filename": (CT, part("f", b"data", "") + END),
    "utf8-filename": (
        CT,
        D + b'\r\nContent-Disposition: form-data; name="f"; filename="\xc3\xa9t\xc3\xa9.txt"\r\n\r\ndata\r\n' + END,
    ),
    "latin1-filename": (
        CT,
        D + b'\r\nContent-Disposition: form-data; name="f"; filename="\xe9t\xe9"\r\n\r\nd\r\n' + END,
    ),
    "header-without-colon": (CT, D + b"\r\nContent-Disposition form-data\r\n\r\nv\r\n" + END),
    "header-nul": (CT, D + b'\r\nContent-Disposition: form-data; name="a\x00b"\r\n\r\nv\r\n' + END),
    "header-folding": (CT, D + b'\r\nContent-Disposition: form-data;\r\n name="a"\r\n\r\nv\r\n' + END),
    "header-line-over-8k": (CT, part("a", b"v", None, b"X-Long: " + b"y" * 9000 + b"\r\n") + END),
    "header-count-65": (CT, part("a", b"v", None, b"X-H: 1\r\n" * 64) + END),  # CVE-2026-42561 shape
    "header-block-over-16k": (CT, part("a", b"v", None, (b"X-H: " + b"z" * 4000 + b"\r\n") * 5) + END),
    "lf-only-lines": (CT, FILE.replace(b"\r\n", b"\n") + END.replace(b"\r\n", b"\n")),
    "boundary-in-data-without-crlf": (CT, part("f", b"x--" + B.encode() + b"y", "a") + END),
    "crlf-boundary-prefix-in-data": (CT, part("f", b"x\r\n--" + B.encode()[:-1] + b"y\r\n--", "a") + END),
    "delimiter-followed-by-junk": (CT, part("f", b"x", "a") + D + b"junk\r\n" + END),
    "only-crlf": (CT, b"\r\n"),
    "only-dashes": (CT, b"----"),
    "hundred-parts": (CT, b"".join(part(f"p{i}", b"v", f"{i}.txt") for i in range(100)) + END),
}


def main() -> None:
    CORPUS.mkdir(exist_ok=True)
    expected = {}
    for name, (content_type, body) in ENTRIES.items():
        path = CORPUS / f"{name}.bin"
        write_entry(path, content_type, body)
        assert read_entry(path) == (content_type, body), name
        expected[path.name] = verdict(content_type, [body])
    (CORPUS / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"{len(expected)} entries in {CORPUS}")


if __name__ == "__main__":
    main()

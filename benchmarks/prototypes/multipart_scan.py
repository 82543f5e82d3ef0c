"""The CPU cost of reading a multipart body, per GiB, beside a raw count of the same bytes (issue 15).

    python benchmarks/prototypes/multipart_scan.py [--size MiB] [--chunks 65536,1048576] [--reps 3] [--boundary B]

Builds one `curl -F`-shaped body in memory (a small field, then a file part of `--size` MiB of seeded random bytes
from a 64 MiB block, as benchmarks/run.py's data file, then the closing delimiter) and times with
`time.process_time` (this thread only; nothing else runs) one pass over the body in chunks of each size, for each
reader. Every reader gets fresh chunks sliced from the body as it asks for them (in cache, as a socket read's bytes
are), so the slicing is in every figure and the excess over `raw` is the reader's own cost:

- `raw`: `n += len(chunk)`, the raw body's own per-chunk work in the inspector;
- `parser`: python-multipart's `MultipartParser.write` with no-op callbacks (what the reader drives);
- `reader`: `relay.core.multipart.MultipartReader.write` with a counting `on_part_data` (what the inspector gets);
- `inspector`: `UploadInspector.feed` with `--digest none` (digest=False), the relay's whole per-chunk core work;
- `find`, `rfind`: `bytes.find` / `bytes.rfind` of the delimiter over each chunk alone (the floor of a scanner built
  on either; CPython's reverse search is the faster one, see Rule 7 in relay/core/multipart.py).

Prints CPU-s/GiB (best of `--reps`) and each reader's excess over `raw`. `--baseline FILE` adds `base`: the
MultipartReader of another version of relay/core/multipart.py, e.g. `git show 9bd3609:relay/core/multipart.py >
/tmp/base.py`, for a before/after in one run. The reader's part sizes are checked against the body, so a broken reader
cannot post a good figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator

from python_multipart.multipart import MultipartParser

from relay.core.inspector import UploadInspector
from relay.core.limits import Limits
from relay.core.multipart import MultipartReader, PartHeaders

GIB = 1024**3
MIB = 1024**2
CURL_BOUNDARY = b"------------------------d74496d66958873e"  # curl's shape: 24 dashes and 16 hex digits


def build_body(size: int, boundary: bytes) -> tuple[bytes, int]:
    """A field and one file part of `size` random bytes; returns the body and the file's size."""
    block = random.Random(20261124).randbytes(min(size, 64 * MIB))
    data = (block * (size // len(block) + 1))[:size]
    dash = b"--" + boundary
    head = (
        dash + b'\r\nContent-Disposition: form-data; name="title"\r\n\r\nhello\r\n'
        b"" + dash + b'\r\nContent-Disposition: form-data; name="file"; filename="data.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    return head + data + b"\r\n" + dash + b"--\r\n", size


def cut(body: bytes, size: int) -> Iterator[bytes]:
    """Fresh chunks, sliced as they are read: in cache when the reader gets them, as a socket read's are."""
    return (body[i : i + size] for i in range(0, len(body), size))


def run_raw(chunks: Iterable[bytes], boundary: bytes) -> int:
    n = 0
    for chunk in chunks:
        n += len(chunk)
    return n


def run_find(chunks: Iterable[bytes], boundary: bytes) -> int:
    delimiter = b"\r\n--" + boundary
    hits = 0
    for chunk in chunks:
        hits += chunk.find(delimiter) >= 0
    return hits


def run_rfind(chunks: Iterable[bytes], boundary: bytes) -> int:
    delimiter = b"\r\n--" + boundary
    hits = 0
    for chunk in chunks:
        hits += chunk.rfind(delimiter) >= 0
    return hits


def run_parser(chunks: Iterable[bytes], boundary: bytes) -> int:
    parser = MultipartParser(boundary, callbacks={})
    for chunk in chunks:
        parser.write(chunk)
    return 0


def run_reader(chunks: Iterable[bytes], boundary: bytes, reader_class: type[MultipartReader] = MultipartReader) -> int:
    sizes: list[int] = []

    def begin(headers: PartHeaders) -> None:
        sizes.append(0)

    def data(view: memoryview) -> None:
        sizes[-1] += len(view)

    reader = reader_class(boundary, on_part_begin=begin, on_part_data=data)
    for chunk in chunks:
        reader.write(chunk)
    reader.close()
    return sizes[-1]


def run_inspector(chunks: Iterable[bytes], boundary: bytes) -> int:
    inspector = UploadInspector(
        upload_id="u",
        content_type="multipart/form-data; boundary=" + boundary.decode(),
        total=None,
        limits=Limits(),
        digest=False,
    )
    for chunk in chunks:
        inspector.feed(chunk, 0.0)
    inspector.finish(0.0)
    return inspector.parts[-1].size


RUNNERS: dict[str, Callable[[Iterable[bytes], bytes], int]] = {
    "raw": run_raw,
    "find": run_find,
    "rfind": run_rfind,
    "parser": run_parser,
    "reader": run_reader,
    "inspector": run_inspector,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="file part size in MiB (default 256)")
    ap.add_argument("--chunks", default="65536,1048576", help="chunk sizes in bytes, comma-separated")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--boundary", default=CURL_BOUNDARY.decode())
    ap.add_argument("--only", default=",".join(RUNNERS), help="which readers, comma-separated")
    ap.add_argument("--baseline", help="another relay/core/multipart.py, timed as `base`")
    a = ap.parse_args()
    names = a.only.split(",")
    if a.baseline:
        spec = importlib.util.spec_from_file_location("baseline_multipart", a.baseline)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        base_class = module.MultipartReader
        RUNNERS["base"] = lambda chunks, boundary: run_reader(chunks, boundary, base_class)
        names.insert(names.index("reader") if "reader" in names else len(names), "base")
    boundary = a.boundary.encode()
    body, file_size = build_body(a.size * MIB, boundary)
    print(f"body {len(body)} bytes, boundary {boundary.decode()!r}, best of {a.reps}")
    for size in (int(s) for s in a.chunks.split(",")):
        figures: dict[str, float] = {}
        for name in names:
            best = float("inf")
            for _ in range(a.reps):
                start = time.process_time()
                got = RUNNERS[name](cut(body, size), boundary)
                spent = time.process_time() - start
                best = min(best, spent * GIB / len(body))
            if name in ("reader", "base", "inspector") and got != file_size:
                raise SystemExit(f"{name}: file part of {got} bytes, expected {file_size}")
            figures[name] = best
        line = ", ".join(
            f"{name} {v:.3f}" + (f" (+{v - figures['raw']:.3f})" if name != "raw" and "raw" in figures else "")
            for name, v in figures.items()
        )
        print(f"chunk {size // 1024} KiB: CPU-s/GiB {line}")


if __name__ == "__main__":
    main()

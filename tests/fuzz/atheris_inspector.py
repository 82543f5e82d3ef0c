"""Coverage-guided fuzzing of UploadInspector with atheris (libFuzzer). Run by hand; not part of the test suite.

    pip install atheris
    mkdir -p /tmp/inspector-corpus   # libFuzzer writes new inputs into the FIRST directory: keep it a scratch one
    python tests/fuzz/atheris_inspector.py -atheris_runs=200000 /tmp/inspector-corpus tests/fuzz/corpus/
    python tests/fuzz/atheris_inspector.py -max_total_time=600 -max_len=65536 /tmp/inspector-corpus tests/fuzz/corpus/

Each input is decoded as: one byte choosing a Content-Type shape, one byte choosing the limits, one byte seeding
the chunking, then the body. The harness checks what the hypothesis tests check (tests/fuzz/test_inspector_fuzz.py):
nothing but RelayError escapes, and one-shot feeding, the seeded chunking and (for small bodies) byte-by-byte
feeding agree on the verdict and the parts. A finding is written by libFuzzer as crash-*; to keep it, turn it into a
corpus entry (Content-Type line, newline, body) in tests/fuzz/corpus/ and add it to tests/fuzz/make_corpus.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import atheris

with atheris.instrument_imports():
    from relay.core.limits import Limits
    from tests.fuzz.common import byte_by_byte, random_cuts, verdict

B = "relay-xyz"
CONTENT_TYPES = [
    f"multipart/form-data; boundary={B}",
    f'multipart/form-data; boundary="{B}"',
    "multipart/form-data; boundary=b",
    "multipart/form-data",
    "application/octet-stream",
    None,
]
LIMITS = [Limits(), Limits(max_file_size=16), Limits(max_files=1), Limits(max_file_size=0, max_files=2)]


def one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    content_type = CONTENT_TYPES[data[0] % len(CONTENT_TYPES)]
    limits = LIMITS[data[1] % len(LIMITS)]
    seed = data[2]
    body = data[3:]
    whole = verdict(content_type, [body], limits)
    split = verdict(content_type, random_cuts(body, seed, 1 + seed % 8), limits)
    if split != whole:
        raise AssertionError(f"chunking changed the verdict: {whole} vs {split}")
    if len(body) <= 2048 and verdict(content_type, byte_by_byte(body), limits) != whole:
        raise AssertionError("byte-by-byte feeding changed the verdict")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

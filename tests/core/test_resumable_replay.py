"""relay.core.resumable_completion: the upstream's answer kept with a completed upload (`keep_answer`) and the
replay of the completion to a completing request sent again (`_replay`, through `decide_append_begin`).

The contract: "A PATCH with Upload-Offset equal to the length on an upload already delivered answers as its
completion did." A tus 2xx completion is the relay's own 204/201 (no body); a tus non-2xx and every IETF
completion are the upstream's own answer, whose headers and (small) body the replay gives again.
"""

from __future__ import annotations

from dataclasses import replace

from relay.core.limits import Limits
from relay.core.resumable import COMPLETED, ResumableUpload, create
from relay.core.resumable_completion import ANSWER_BODY_CAP, keep_answer
from relay.core.resumable_decisions import decide_append_begin
from relay.core.resumable_headers import Protocol, parse_request

NOW = 1_700_000_000.0
LIMITS = Limits(max_body_size=None, max_file_size=None, max_files=None)
UPSTREAM = [
    (b"content-type", b"application/json"),
    (b"content-length", b"11"),
    (b"Transfer-Encoding", b"chunked"),
    (b"access-control-allow-origin", b"*"),
    (b"date", b"Tue, 01 Dec 2026 00:00:00 GMT"),
    (b"location", b"/files/42"),
    (b"x-upload-id", b"stale"),
]


def delivered(protocol: Protocol, status: int) -> ResumableUpload:
    upload = create(
        upload_id="u1",
        route="/upload/",
        target=b"/upload/a",
        protocol=protocol,
        now=NOW,
        expiry=3600,
        length=5,
        metadata={},
    )
    return replace(upload, offset=5, state=COMPLETED, upstream_status=status, sha256="ab" * 32)


def again(protocol: Protocol, upload: ResumableUpload) -> tuple[int | None, dict[str, str], bytes]:
    """The completing request sent again (an empty PATCH at the full offset), decided."""
    if protocol == "tus":
        headers = [(b"tus-resumable", b"1.0.0"), (b"upload-offset", b"5"), (b"content-length", b"0")]
        headers.append((b"content-type", b"application/offset+octet-stream"))
    else:
        version = b"6" if protocol == "ietf-6" else b"8"
        headers = [(b"upload-draft-interop-version", version), (b"upload-offset", b"5"), (b"content-length", b"0")]
        headers += [(b"upload-complete", b"?1"), (b"content-type", b"application/partial-upload")]
    req = parse_request("PATCH", headers, protocol)
    decision = decide_append_begin(req, upload, writer="w2", now=NOW + 1, limits=LIMITS)
    names = [name.decode().lower() for name, _ in decision.headers]
    assert len(names) == len(set(names)), names  # no header twice
    return decision.status, {n.decode().lower(): v.decode() for n, v in decision.headers}, decision.body


def test_keep_answer_drops_framing_connection_and_cors_headers() -> None:
    kept = keep_answer(delivered("tus", 500), UPSTREAM, b'{"no": "quota"}')
    assert dict(kept.answer_headers) == {
        "content-type": "application/json",
        "location": "/files/42",
        "x-upload-id": "stale",
    }
    assert kept.answer_body == b'{"no": "quota"}'


def test_a_body_over_the_cap_is_not_kept_nor_its_headers() -> None:
    upload = delivered("tus", 500)
    assert keep_answer(upload, UPSTREAM, b"x" * ANSWER_BODY_CAP).answer_body == b"x" * ANSWER_BODY_CAP
    too_large = keep_answer(upload, UPSTREAM, b"x" * (ANSWER_BODY_CAP + 1))
    assert (too_large.answer_headers, too_large.answer_body) == ((), None)
    assert keep_answer(upload, UPSTREAM, None).answer_body is None


def test_a_tus_non_2xx_completion_replays_the_upstream_answer() -> None:
    upload = keep_answer(delivered("tus", 500), UPSTREAM, b'{"no": "quota"}')
    status, headers, body = again("tus", upload)
    assert (status, body) == (500, b'{"no": "quota"}')
    assert headers["content-type"] == "application/json" and headers["location"] == "/files/42"
    assert headers["x-upload-id"] == "u1"  # the upload's own headers win over the kept ones
    assert headers["x-upstream-status"] == "500" and headers["tus-resumable"] == "1.0.0"
    assert "content-length" not in headers  # the glue frames the replayed body itself


def test_a_tus_2xx_completion_replays_the_relays_own_answer() -> None:
    status, headers, body = again("tus", delivered("tus", 200))
    assert (status, body) == (204, b"")
    assert headers["x-upload-sha256"] == "ab" * 32 and headers["upload-offset"] == "5"


def test_ietf_completions_replay_the_upstream_answer_body() -> None:
    for protocol in ("ietf-6", "ietf-8"):
        upload = keep_answer(delivered(protocol, 200), UPSTREAM, b'{"bytes": 5}')  # type: ignore[arg-type]
        status, headers, body = again(protocol, upload)  # type: ignore[arg-type]
        assert (status, body) == (200, b'{"bytes": 5}'), protocol
        assert headers["content-type"] == "application/json" and headers["x-upstream-status"] == "200"


def test_without_a_kept_body_the_replay_is_status_and_the_uploads_headers() -> None:
    status, headers, body = again("tus", delivered("tus", 503))
    assert (status, body) == (503, b"")
    assert "content-type" not in headers and headers["x-upstream-status"] == "503"

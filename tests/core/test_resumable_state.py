"""relay.core.resumable: the transition table, the decisions, and a model check of appends and restarts.

The model test drives the decisions the way the glue will, with a bytearray standing in for the spool:
any sequence of appends, breaks, checksum failures, overflows and restarts (info serialised and read
back, `recover` against the spool's size) ends with the spool holding exactly the file, or with the
upload failed; at every step between requests the spool holds exactly `file[:offset]`.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from relay.core.events import ErrorInfo
from relay.core.limits import Limits
from relay.core.resumable import (
    ANSWERED,
    APPEND_BEGIN,
    APPEND_BREAK,
    APPEND_COMMIT,
    APPEND_DISCARD,
    APPENDING,
    COMPLETE,
    COMPLETED,
    EVENTS,
    EXPIRE,
    FAILED,
    FORWARD_ERROR,
    FORWARD_OK,
    FORWARDING,
    INVALIDATE,
    LENGTH_SET,
    RECEIVING,
    STATES,
    TERMINATE,
    TRANSITIONS,
    IllegalTransition,
    ResumableSettings,
    ResumableUpload,
    StaleWriter,
    WriterOpen,
    apply,
    create,
    recover,
    sweep,
)
from relay.core.resumable_decisions import (
    Decision,
    decide_append_begin,
    decide_append_end,
    decide_create,
    decide_delete,
    decide_error,
    decide_forward_end,
    decide_head,
    decide_options,
    method_not_allowed,
)
from relay.core.resumable_headers import (
    Protocol,
    ResumableRequest,
    UnsupportedChecksum,
    UnsupportedTusVersion,
    parse_request,
)
from relay.errors import UpstreamUnavailable

NOW = 1_000_000.0
LIMITS = Limits(max_body_size=10_000, max_file_size=None)
SETTINGS = ResumableSettings(expiry=3600, max_incomplete=10, headroom=1000)
PROTOCOLS: list[Protocol] = ["tus", "ietf-6", "ietf-8"]


def new_upload(length: int | None = 100, protocol: Protocol = "tus", **changes: object) -> ResumableUpload:
    upload = create(
        upload_id="u1",
        route="/upload/",
        target=b"/upload/a?x=%20",
        protocol=protocol,
        now=NOW,
        expiry=3600,
        length=length,
        metadata={"filename": "a.bin"},
    )
    return replace(upload, **changes)  # type: ignore[arg-type]


def headers_of(decision: Decision) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in decision.headers}


# The table ------------------------------------------------------------------------------------------

LEGAL = set(TRANSITIONS)


@pytest.mark.parametrize(("state", "event"), list(itertools.product(sorted(STATES), sorted(EVENTS))))
def test_table_refuses_every_move_it_does_not_list(state: str, event: str) -> None:
    upload = new_upload(state=state, writer="w" if state == APPENDING else None, append_start=0)
    if (state, event) in LEGAL:
        return  # the legal moves are checked one by one below
    with pytest.raises(IllegalTransition) as info:
        apply(upload, event, now=NOW, writer="w", offset=0, length=100)
    assert (info.value.state, info.value.event) == (state, event)


def test_create_starts_receiving() -> None:
    upload = new_upload()
    assert (upload.state, upload.offset, upload.expires_at) == (RECEIVING, 0, NOW + 3600)


def test_append_commit_break_discard() -> None:
    upload = apply(new_upload(), APPEND_BEGIN, now=NOW, writer="w")
    assert (upload.state, upload.writer, upload.append_start) == (APPENDING, "w", 0)
    committed = apply(upload, APPEND_COMMIT, now=NOW + 5, writer="w", offset=40)
    assert (committed.state, committed.offset, committed.writer, committed.expires_at) == (
        RECEIVING,
        40,
        None,
        NOW + 3605,
    )
    broken = apply(upload, APPEND_BREAK, now=NOW, writer="w", offset=7)
    assert (broken.state, broken.offset) == (RECEIVING, 7)
    again = apply(
        apply(committed, APPEND_BEGIN, now=NOW, writer="x", checksum=True), APPEND_DISCARD, now=NOW, writer="x"
    )
    assert (again.state, again.offset) == (RECEIVING, 40)


def test_stale_writer_cannot_move_the_offset() -> None:
    upload = apply(new_upload(), APPEND_BEGIN, now=NOW, writer="new")
    for event in (APPEND_COMMIT, APPEND_BREAK, APPEND_DISCARD, INVALIDATE):
        with pytest.raises(StaleWriter):
            apply(upload, event, now=NOW, writer="old", offset=10)


def test_a_second_writer_is_refused() -> None:
    upload = apply(new_upload(), APPEND_BEGIN, now=NOW, writer="w")
    with pytest.raises(IllegalTransition):
        apply(upload, APPEND_BEGIN, now=NOW, writer="x")


@pytest.mark.parametrize(("offset", "ok"), [(0, True), (100, True), (101, False), (-1, False)])
def test_offset_stays_within_start_and_length(offset: int, ok: bool) -> None:
    upload = apply(new_upload(), APPEND_BEGIN, now=NOW, writer="w")
    if ok:
        assert apply(upload, APPEND_COMMIT, now=NOW, writer="w", offset=offset).offset == offset
    else:
        with pytest.raises(IllegalTransition):
            apply(upload, APPEND_COMMIT, now=NOW, writer="w", offset=offset)


def test_length_set_once_and_not_below_offset() -> None:
    deferred = new_upload(length=None, offset=50)
    assert apply(deferred, LENGTH_SET, now=NOW, length=50).length == 50
    with pytest.raises(IllegalTransition):
        apply(deferred, LENGTH_SET, now=NOW, length=49)
    with pytest.raises(IllegalTransition):
        apply(new_upload(), LENGTH_SET, now=NOW, length=100)


def test_complete_forward_and_terminal_states() -> None:
    with pytest.raises(IllegalTransition):
        apply(new_upload(offset=99), COMPLETE, now=NOW)
    forwarding = apply(new_upload(offset=100), COMPLETE, now=NOW)
    assert forwarding.state == FORWARDING
    failed_once = apply(forwarding, FORWARD_ERROR, now=NOW, error=ErrorInfo("upstream_unavailable", "down"))
    assert (failed_once.state, failed_once.error) == (FORWARDING, ErrorInfo("upstream_unavailable", "down"))
    done = apply(failed_once, FORWARD_OK, now=NOW, upstream_status=201)
    assert (done.state, done.upstream_status, done.error) == (COMPLETED, 201, None)


@pytest.mark.parametrize(("event", "code"), [(EXPIRE, "expired"), (TERMINATE, "terminated")])
@pytest.mark.parametrize("state", [RECEIVING, FORWARDING])
def test_expire_and_terminate(event: str, code: str, state: str) -> None:
    upload = apply(new_upload(state=state), event, now=NOW)
    assert upload.state == FAILED and upload.error is not None and upload.error.code == code


def test_answered_ends_an_append_completed_with_what_came() -> None:
    upload = apply(new_upload(offset=10), APPEND_BEGIN, now=NOW, writer="w")
    done = apply(upload, ANSWERED, now=NOW, writer="w", offset=60, upstream_status=413)
    assert (done.state, done.offset, done.upstream_status, done.writer, done.error) == (COMPLETED, 60, 413, None, None)
    with pytest.raises(StaleWriter):
        apply(upload, ANSWERED, now=NOW, writer="old", offset=60, upstream_status=413)
    with pytest.raises(IllegalTransition):
        apply(upload, ANSWERED, now=NOW, writer="w", offset=9, upstream_status=413)  # below the append's start


def test_invalidate_fails_the_upload() -> None:
    upload = apply(apply(new_upload(), APPEND_BEGIN, now=NOW, writer="w"), INVALIDATE, now=NOW, writer="w")
    assert upload.state == FAILED and upload.error is not None and upload.error.code == "inconsistent_upload_length"


# Serialisation --------------------------------------------------------------------------------------


@given(
    offset=st.integers(0, 2**50),
    length=st.none() | st.integers(0, 2**50),
    metadata=st.dictionaries(st.text(min_size=1), st.text()),
    target=st.binary(),
    state=st.sampled_from(sorted(STATES)),
    protocol=st.sampled_from(PROTOCOLS),
    error=st.none() | st.builds(ErrorInfo, st.text(), st.text()),
    answer_headers=st.lists(st.tuples(st.text(min_size=1), st.text())).map(tuple),
    answer_body=st.none() | st.binary(),
)
def test_json_round_trip(
    offset: int,
    length: int | None,
    metadata: dict[str, str],
    target: bytes,
    state: str,
    protocol: Protocol,
    error: ErrorInfo | None,
    answer_headers: tuple[tuple[str, str], ...],
    answer_body: bytes | None,
) -> None:
    upload = new_upload(
        length=length, protocol=protocol, offset=offset, metadata=metadata, target=target, state=state, error=error
    )
    upload = replace(upload, answer_headers=answer_headers, answer_body=answer_body)
    assert ResumableUpload.from_json(upload.to_json()) == upload


def test_from_json_refuses_unknown_versions_and_states() -> None:
    data = json.loads(new_upload().to_json())
    with pytest.raises(ValueError):
        ResumableUpload.from_json(json.dumps({**data, "v": 2}))
    with pytest.raises(ValueError):
        ResumableUpload.from_json(json.dumps({**data, "state": "paused"}))


# Recovery -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upload", "durable", "state", "offset", "keep"),
    [
        (new_upload(offset=40), 40, RECEIVING, 40, 40),
        (new_upload(offset=40), 70, RECEIVING, 70, 70),  # an unrecorded append's bytes are kept
        # never past the length; every byte there: finished, back to forwarding to be delivered again
        (new_upload(offset=40), 170, FORWARDING, 100, 100),
        (new_upload(offset=40), 99, RECEIVING, 99, 99),
        (new_upload(offset=100), 100, FORWARDING, 100, 100),  # a completing append recorded only in memory
        (new_upload(offset=40, state=APPENDING, writer="w", append_start=40), 60, RECEIVING, 60, 60),
        (
            new_upload(offset=40, state=APPENDING, writer="w", append_start=40, append_checksum=True),
            60,
            RECEIVING,
            40,
            40,  # a checksummed append can no longer be verified: discarded
        ),
        (new_upload(offset=40), 30, FAILED, 40, 30),  # lost data
        (new_upload(offset=40, state=APPENDING, writer="w", append_start=40), 39, FAILED, 40, 39),
        (new_upload(offset=100, state=FORWARDING), 100, FORWARDING, 100, 100),
        (new_upload(offset=100, state=COMPLETED), 0, COMPLETED, 100, 0),
    ],
)
def test_recover(upload: ResumableUpload, durable: int, state: str, offset: int, keep: int) -> None:
    recovered, size = recover(upload, durable, now=NOW + 1)
    assert (recovered.state, recovered.offset, size) == (state, offset, keep)
    assert recovered.writer is None
    if state == FAILED:
        assert recovered.error is not None and recovered.error.code == "data_lost"


def test_recover_without_news_keeps_the_expiry() -> None:
    upload = new_upload(offset=40)
    assert recover(upload, 40, now=NOW + 100)[0].expires_at == upload.expires_at


@pytest.mark.parametrize(
    ("state", "now", "expected"),
    [
        (RECEIVING, NOW, "keep"),
        (RECEIVING, NOW + 3600, "expire"),
        (FORWARDING, NOW + 3600, "expire"),
        (APPENDING, NOW + 7200, "keep"),
        (COMPLETED, NOW + 3599, "keep"),
        (COMPLETED, NOW + 3600, "forget"),
        (FAILED, NOW + 3600, "forget"),
    ],
)
def test_sweep(state: str, now: float, expected: str) -> None:
    assert sweep(new_upload(state=state), now) == expected


# Decisions ------------------------------------------------------------------------------------------


def request(protocol: Protocol, method: str, *headers: tuple[bytes, bytes]) -> ResumableRequest:
    base = (
        [(b"tus-resumable", b"1.0.0")]
        if protocol == "tus"
        else [(b"upload-draft-interop-version", protocol[-1:].encode())]
    )
    return parse_request(method, base + list(headers), protocol)


def decide_new(req: ResumableRequest, **changes: object) -> Decision:
    arguments: dict[str, object] = {
        "upload_id": "u1",
        "route": "/upload/",
        "target": b"/upload/a",
        "location": "/resumable/u1",
        "writer": "w",
        "now": NOW,
        "limits": LIMITS,
        "settings": SETTINGS,
        "free_bytes": 10**9,
        "incomplete": 0,
        **changes,
    }
    return decide_create(req, **arguments)  # type: ignore[arg-type]


def test_tus_create_without_body() -> None:
    decision = decide_new(
        request("tus", "POST", (b"upload-length", b"100"), (b"upload-metadata", b"filename YS5iaW4="))
    )
    headers = headers_of(decision)
    assert (decision.action, decision.status) == ("respond", 201)
    assert (
        headers["Location"] == "/resumable/u1"
        and headers["Tus-Resumable"] == "1.0.0"
        and headers["X-Upload-ID"] == "u1"
    )
    assert "Upload-Expires" in headers
    assert decision.upload is not None and decision.upload.metadata == {"filename": "a.bin"}


def test_tus_create_with_body_appends() -> None:
    req = request("tus", "POST", (b"upload-length", b"100"), (b"content-type", b"application/offset+octet-stream"))
    decision = decide_new(req)
    assert (decision.action, decision.max_bytes, decision.interim) == ("append", 100, None)
    assert decision.upload is not None and decision.upload.state == APPENDING
    end = decide_append_end(
        req, decision.upload, writer="w", written=30, ended=True, now=NOW, limits=LIMITS, location="/resumable/u1"
    )
    assert (end.status, headers_of(end)["Upload-Offset"], headers_of(end)["Location"]) == (201, "30", "/resumable/u1")


def test_tus_zero_length_upload_completes_at_creation() -> None:
    decision = decide_new(request("tus", "POST", (b"upload-length", b"0")))
    assert decision.action == "forward" and decision.upload is not None and decision.upload.state == FORWARDING


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([], 400),  # neither Upload-Length nor deferral
        ([(b"upload-length", b"10001")], 413),
        ([(b"upload-defer-length", b"1")], 201),
    ],
)
def test_tus_create_refusals(headers: list[tuple[bytes, bytes]], status: int) -> None:
    decision = decide_new(request("tus", "POST", *headers))
    assert decision.status == status
    if status == 413:
        assert headers_of(decision)["Tus-Max-Size"] == "10000"
        assert json.loads(decision.body)["error"]["code"] == "body_too_large"


def test_file_limit_gives_file_too_large() -> None:
    decision = decide_new(
        request("tus", "POST", (b"upload-length", b"600")), limits=Limits(max_body_size=1000, max_file_size=500)
    )
    assert json.loads(decision.body)["error"]["code"] == "file_too_large"
    assert headers_of(decision)["Tus-Max-Size"] == "500"


def test_create_caps_and_storage() -> None:
    req = request("tus", "POST", (b"upload-length", b"100"))
    too_many = decide_new(req, incomplete=10)
    assert too_many.status == 429 and headers_of(too_many)["Retry-After"] == "1"
    assert decide_new(req, free_bytes=1099).status == 507
    assert decide_new(req, free_bytes=1100).status == 201


@pytest.mark.parametrize("protocol", ["ietf-6", "ietf-8"])
def test_ietf_create_sends_104_then_appends(protocol: Protocol) -> None:
    req = request(
        protocol, "POST", (b"upload-complete", b"?1"), (b"content-length", b"50"), (b"content-type", b"image/png")
    )
    decision = decide_new(req)
    assert decision.action == "append" and decision.interim is not None
    assert (b"Location", b"/resumable/u1") in decision.interim
    assert (
        decision.upload is not None
        and decision.upload.length == 50
        and decision.upload.metadata["filetype"] == "image/png"
    )
    end = decide_append_end(
        req, decision.upload, writer="w", written=50, ended=True, now=NOW, limits=LIMITS, location="/resumable/u1"
    )
    assert end.action == "forward" and end.upload is not None and end.upload.state == FORWARDING


@pytest.mark.parametrize("protocol", ["ietf-6", "ietf-8"])
def test_ietf_create_incomplete(protocol: Protocol) -> None:
    req = request(protocol, "POST", (b"upload-complete", b"?0"), (b"content-length", b"0"), (b"upload-length", b"100"))
    decision = decide_new(req)
    headers = headers_of(decision)
    assert decision.status == 201 and headers["Upload-Complete"] == "?0" and headers["Location"] == "/resumable/u1"
    assert headers["Upload-Limit"] == (
        "max-size=10000,expires=3600" if protocol == "ietf-6" else "max-size=10000,max-age=3600"
    )


def test_ietf_create_needs_upload_complete_and_consistent_lengths() -> None:
    assert decide_new(request("ietf-8", "POST")).status == 400
    inconsistent = request(
        "ietf-8", "POST", (b"upload-complete", b"?1"), (b"content-length", b"5"), (b"upload-length", b"6")
    )
    decision = decide_new(inconsistent)
    assert decision.status == 400
    assert json.loads(decision.body)["type"].endswith("#inconsistent-upload-length")
    v6 = decide_new(replace(inconsistent, protocol="ietf-6"))
    assert (
        v6.status == 400 and json.loads(v6.body)["error"]["code"] == "inconsistent_upload_length"
    )  # no such type in -05


def patch(protocol: Protocol, offset: int, *headers: tuple[bytes, bytes]) -> ResumableRequest:
    media = b"application/offset+octet-stream" if protocol == "tus" else b"application/partial-upload"
    return request(protocol, "PATCH", (b"upload-offset", str(offset).encode()), (b"content-type", media), *headers)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_append_offset_mismatch_is_409_with_the_offset(protocol: Protocol) -> None:
    upload = new_upload(protocol=protocol, offset=10)
    decision = decide_append_begin(patch(protocol, 20), upload, writer="w", now=NOW, limits=LIMITS)
    assert decision.status == 409 and headers_of(decision)["Upload-Offset"] == "10" and decision.upload is None
    body = json.loads(decision.body)
    if protocol == "tus":
        assert body["error"]["code"] == "offset_mismatch"
    else:
        assert body == {
            "type": "https://iana.org/assignments/http-problem-types#mismatching-upload-offset",
            "title": "offset from request does not match offset of resource",
            "expected-offset": 10,
            "provided-offset": 20,
        }
        assert headers_of(decision)["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_append_wrong_media_type_is_415(protocol: Protocol) -> None:
    req = request(protocol, "PATCH", (b"upload-offset", b"0"), (b"content-type", b"application/octet-stream"))
    assert decide_append_begin(req, new_upload(protocol=protocol), writer="w", now=NOW, limits=LIMITS).status == 415


def test_append_unknown_expired_terminated_are_404() -> None:
    req = patch("tus", 0)
    assert decide_append_begin(req, None, writer="w", now=NOW, limits=LIMITS).status == 404
    expired = decide_append_begin(req, new_upload(), writer="w", now=NOW + 3600, limits=LIMITS)
    assert expired.status == 404 and expired.upload is not None and expired.upload.state == FAILED
    terminated = apply(new_upload(), TERMINATE, now=NOW)
    assert decide_append_begin(req, terminated, writer="w", now=NOW, limits=LIMITS).status == 404


def test_decisions_refuse_while_a_writer_is_open() -> None:
    open_upload = apply(new_upload(), APPEND_BEGIN, now=NOW, writer="old")
    with pytest.raises(WriterOpen):
        decide_append_begin(patch("tus", 0), open_upload, writer="new", now=NOW, limits=LIMITS)
    with pytest.raises(WriterOpen):
        decide_head(request("tus", "HEAD"), open_upload, now=NOW, limits=LIMITS)


def test_tus_checksum_mismatch_is_460_and_keeps_the_offset() -> None:
    req = patch("tus", 10, (b"upload-checksum", b"sha1 " + b"A" * 27 + b"="))
    begin = decide_append_begin(req, new_upload(offset=10), writer="w", now=NOW, limits=LIMITS)
    assert begin.upload is not None and begin.upload.append_checksum
    end = decide_append_end(
        req, begin.upload, writer="w", written=20, ended=True, checksum_ok=False, now=NOW, limits=LIMITS
    )
    assert end.status == 460 and end.upload is not None and end.upload.offset == 10
    assert headers_of(end)["Upload-Offset"] == "10"


def test_tus_bytes_past_the_length_413() -> None:
    early = decide_append_begin(
        patch("tus", 90, (b"content-length", b"11")), new_upload(offset=90), writer="w", now=NOW, limits=LIMITS
    )
    assert early.status == 413
    begin = decide_append_begin(patch("tus", 90), new_upload(offset=90), writer="w", now=NOW, limits=LIMITS)
    assert begin.max_bytes == 10 and begin.upload is not None
    end = decide_append_end(
        patch("tus", 90), begin.upload, writer="w", written=10, ended=False, overflow=True, now=NOW, limits=LIMITS
    )
    assert end.status == 413 and end.upload is not None and end.upload.offset == 90


def test_ietf_bytes_past_the_length_per_version() -> None:
    for protocol, status, state, offset in (("ietf-6", 400, RECEIVING, 100), ("ietf-8", 400, FAILED, 90)):
        begin = decide_append_begin(
            patch(protocol, 90), new_upload(offset=90, protocol=protocol), writer="w", now=NOW, limits=LIMITS
        )
        assert begin.upload is not None
        end = decide_append_end(
            patch(protocol, 90),
            begin.upload,
            writer="w",
            written=10,
            ended=False,
            overflow=True,
            now=NOW,
            limits=LIMITS,
        )
        assert (
            end.status == status and end.upload is not None and (end.upload.state, end.upload.offset) == (state, offset)
        )
    assert end.action == "delete" and json.loads(end.body)["type"].endswith("#inconsistent-upload-length")


@pytest.mark.parametrize(("protocol", "state"), [("tus", RECEIVING), ("ietf-6", FAILED), ("ietf-8", FAILED)])
def test_deferred_upload_past_the_size_limit(protocol: Protocol, state: str) -> None:
    upload = new_upload(protocol=protocol, length=None, offset=9_990)
    begin = decide_append_begin(patch(protocol, 9_990), upload, writer="w", now=NOW, limits=LIMITS)
    assert begin.max_bytes == 10 and begin.upload is not None
    end = decide_append_end(
        patch(protocol, 9_990), begin.upload, writer="w", written=10, ended=False, overflow=True, now=NOW, limits=LIMITS
    )
    assert end.status == 413 and end.upload is not None and end.upload.state == state
    assert json.loads(end.body)["error"]["code"] == "body_too_large"
    if protocol == "tus":
        assert headers_of(end)["Tus-Max-Size"] == "10000" and end.upload.offset == 9_990
        early = decide_append_begin(
            patch("tus", 9_990, (b"content-length", b"11")), upload, writer="w", now=NOW, limits=LIMITS
        )
        assert early.status == 413 and json.loads(early.body)["error"]["code"] == "body_too_large"


@pytest.mark.parametrize(
    ("limits", "code"),
    [
        (Limits(max_body_size=None, max_file_size=10_000), "file_too_large"),
        (Limits(max_body_size=20_000, max_file_size=10_000), "file_too_large"),
        (Limits(max_body_size=10_000, max_file_size=20_000), "body_too_large"),
    ],
)
def test_deferred_upload_past_the_file_limit_names_it(limits: Limits, code: str) -> None:
    """The contract: past `max_file_size` is 413 `file_too_large`, as at creation (the smaller limit is the one)."""
    upload = new_upload(protocol="tus", length=None, offset=9_990)
    begin = decide_append_begin(patch("tus", 9_990), upload, writer="w", now=NOW, limits=limits)
    assert begin.upload is not None
    end = decide_append_end(
        patch("tus", 9_990), begin.upload, writer="w", written=10, ended=False, overflow=True, now=NOW, limits=limits
    )
    assert end.status == 413 and json.loads(end.body)["error"]["code"] == code
    early = decide_append_begin(
        patch("tus", 9_990, (b"content-length", b"11")), upload, writer="w", now=NOW, limits=limits
    )
    assert early.status == 413 and json.loads(early.body)["error"]["code"] == code


def test_tus_deferred_length_set_on_a_patch() -> None:
    req = patch("tus", 40, (b"upload-length", b"60"))
    begin = decide_append_begin(req, new_upload(length=None, offset=40), writer="w", now=NOW, limits=LIMITS)
    assert begin.upload is not None and begin.upload.length == 60 and begin.max_bytes == 20
    end = decide_append_end(req, begin.upload, writer="w", written=20, ended=True, now=NOW, limits=LIMITS)
    assert end.action == "forward"
    changed = decide_append_begin(
        patch("tus", 40, (b"upload-length", b"70")), new_upload(offset=40), writer="w", now=NOW, limits=LIMITS
    )
    assert changed.status == 400


def test_tus_patch_answers_204_with_offset_and_expiry() -> None:
    req = patch("tus", 0)
    begin = decide_append_begin(req, new_upload(), writer="w", now=NOW, limits=LIMITS)
    assert begin.upload is not None
    end = decide_append_end(req, begin.upload, writer="w", written=25, ended=True, now=NOW + 10, limits=LIMITS)
    headers = headers_of(end)
    assert end.status == 204 and headers["Upload-Offset"] == "25" and headers["Upload-Expires"].endswith(" GMT")
    assert end.upload is not None and end.upload.expires_at == NOW + 3610


@pytest.mark.parametrize(("protocol", "status"), [("ietf-6", 201), ("ietf-8", 204)])
def test_ietf_incomplete_append(protocol: Protocol, status: int) -> None:
    req = patch(protocol, 0, (b"upload-complete", b"?0"))
    begin = decide_append_begin(req, new_upload(protocol=protocol, length=None), writer="w", now=NOW, limits=LIMITS)
    assert begin.upload is not None and begin.max_bytes == 10_000
    end = decide_append_end(req, begin.upload, writer="w", written=30, ended=True, now=NOW, limits=LIMITS)
    assert (
        end.status == status and headers_of(end)["Upload-Complete"] == "?0" and headers_of(end)["Upload-Offset"] == "30"
    )


def test_ietf_complete_sets_a_deferred_length() -> None:
    req = patch("ietf-8", 30, (b"upload-complete", b"?1"))
    begin = decide_append_begin(
        req, new_upload(protocol="ietf-8", length=None, offset=30), writer="w", now=NOW, limits=LIMITS
    )
    assert begin.upload is not None
    end = decide_append_end(req, begin.upload, writer="w", written=12, ended=True, now=NOW, limits=LIMITS)
    assert (
        end.action == "forward" and end.upload is not None and (end.upload.length, end.upload.state) == (42, FORWARDING)
    )


def test_ietf_complete_short_of_the_length_is_inconsistent() -> None:
    req = patch("ietf-8", 0, (b"upload-complete", b"?1"))
    begin = decide_append_begin(req, new_upload(protocol="ietf-8"), writer="w", now=NOW, limits=LIMITS)
    assert begin.upload is not None
    end = decide_append_end(req, begin.upload, writer="w", written=50, ended=True, now=NOW, limits=LIMITS)
    assert end.status == 400 and end.upload is not None and (end.upload.state, end.upload.offset) == (RECEIVING, 50)


def test_broken_append_keeps_its_bytes_without_answer() -> None:
    begin = decide_append_begin(patch("tus", 0), new_upload(), writer="w", now=NOW, limits=LIMITS)
    assert begin.upload is not None
    end = decide_append_end(patch("tus", 0), begin.upload, writer="w", written=33, ended=False, now=NOW, limits=LIMITS)
    assert end.action == "none" and end.status is None and end.upload is not None and end.upload.offset == 33


def test_forward_end_tus_and_ietf() -> None:
    forwarding = apply(new_upload(offset=100), COMPLETE, now=NOW)
    ok = decide_forward_end(patch("tus", 0), forwarding, now=NOW, upstream_status=200, sha256="ab" * 32)
    headers = headers_of(ok)
    assert ok.status == 204 and headers["X-Upstream-Status"] == "200" and headers["X-Upload-Sha256"] == "ab" * 32
    assert ok.upload is not None and ok.upload.state == COMPLETED
    created = decide_forward_end(
        request("tus", "POST", (b"upload-length", b"100")), forwarding, now=NOW, upstream_status=201
    )
    assert created.status == 201
    refused = decide_forward_end(patch("tus", 0), forwarding, now=NOW, upstream_status=422)
    assert (refused.action, refused.status) == ("upstream", 422)
    ietf = decide_forward_end(
        patch("ietf-8", 0, (b"upload-complete", b"?1")),
        replace(forwarding, protocol="ietf-8"),
        now=NOW,
        upstream_status=200,
    )
    assert (
        ietf.action == "upstream"
        and headers_of(ietf)["Upload-Complete"] == "?1"
        and headers_of(ietf)["Upload-Offset"] == "100"
    )
    down = decide_forward_end(patch("tus", 0), forwarding, now=NOW, error=UpstreamUnavailable())
    assert down.status == 502 and down.upload is not None and down.upload.state == FORWARDING
    assert down.upload.error is not None and down.upload.error.code == "upstream_unavailable"


def test_completing_request_again() -> None:
    forwarding = apply(new_upload(offset=100), COMPLETE, now=NOW)
    retry = decide_append_begin(patch("tus", 100), forwarding, writer="w", now=NOW, limits=LIMITS)
    assert retry.action == "forward"
    delivered = apply(forwarding, FORWARD_OK, now=NOW, upstream_status=200)
    replay = decide_append_begin(patch("tus", 100), delivered, writer="w", now=NOW, limits=LIMITS)
    assert replay.status == 204 and headers_of(replay)["X-Upstream-Status"] == "200"
    more = decide_append_begin(
        patch("tus", 100, (b"content-length", b"1")), delivered, writer="w", now=NOW, limits=LIMITS
    )
    assert more.status == 413
    v6 = decide_append_begin(
        patch("ietf-6", 100, (b"content-length", b"1")),
        replace(delivered, protocol="ietf-6"),
        writer="w",
        now=NOW,
        limits=LIMITS,
    )
    assert v6.status == 400 and json.loads(v6.body)["type"].endswith("#completed-upload")
    v8 = decide_append_begin(
        patch("ietf-8", 100, (b"content-length", b"1")),
        replace(delivered, protocol="ietf-8"),
        writer="w",
        now=NOW,
        limits=LIMITS,
    )
    assert v8.status == 400 and json.loads(v8.body)["type"].endswith("#inconsistent-upload-length")


def test_head_tus() -> None:
    decision = decide_head(request("tus", "HEAD"), new_upload(offset=7), now=NOW, limits=LIMITS)
    headers = headers_of(decision)
    assert decision.status == 200
    assert (
        headers["Upload-Offset"] == "7" and headers["Upload-Length"] == "100" and headers["Cache-Control"] == "no-store"
    )
    assert headers["Upload-Metadata"] == "filename YS5iaW4=" and headers["Upload-Expires"].endswith(" GMT")
    deferred = headers_of(decide_head(request("tus", "HEAD"), new_upload(length=None), now=NOW, limits=LIMITS))
    assert deferred["Upload-Defer-Length"] == "1" and "Upload-Length" not in deferred


@pytest.mark.parametrize("protocol", ["ietf-6", "ietf-8"])
def test_head_ietf(protocol: Protocol) -> None:
    decision = decide_head(request(protocol, "HEAD"), new_upload(protocol=protocol, offset=7), now=NOW, limits=LIMITS)
    headers = headers_of(decision)
    assert decision.status == 204 and headers["Upload-Complete"] == "?0" and headers["Upload-Offset"] == "7"
    assert "Upload-Limit" in headers and headers["Upload-Draft-Interop-Version"] == protocol[-1]
    done = decide_head(
        request(protocol, "HEAD"), new_upload(protocol=protocol, offset=100, state=FORWARDING), now=NOW, limits=LIMITS
    )
    assert headers_of(done)["Upload-Complete"] == "?1"


def test_head_with_upload_headers_is_400_in_draft_05() -> None:
    req = request("ietf-6", "HEAD", (b"upload-offset", b"0"))
    assert decide_head(req, new_upload(protocol="ietf-6"), now=NOW, limits=LIMITS).status == 400


def test_delete() -> None:
    decision = decide_delete(request("tus", "DELETE"), new_upload(), now=NOW)
    assert (decision.action, decision.status) == ("delete", 204)
    assert decision.upload is not None and decision.upload.error == ErrorInfo("terminated", "the upload was terminated")
    assert decide_delete(request("tus", "DELETE"), decision.upload, now=NOW).status == 404


def test_options_and_405() -> None:
    tus = headers_of(decide_options("tus", LIMITS))
    assert (
        tus["Tus-Version"] == "1.0.0"
        and tus["Tus-Max-Size"] == "10000"
        and tus["Tus-Checksum-Algorithm"] == "sha1,sha256,md5"
    )
    assert (
        tus["Tus-Extension"]
        == "creation,creation-with-upload,creation-defer-length,termination,expiration,checksum,concatenation"
    )
    ietf = headers_of(decide_options("ietf-8", LIMITS))
    assert ietf["Accept-Patch"] == "application/partial-upload" and ietf["Upload-Limit"] == "max-size=10000"
    refused = method_not_allowed("tus")
    assert refused.status == 405 and headers_of(refused)["Allow"] == "HEAD, PATCH, DELETE, OPTIONS"


def test_errors_raised_by_parsing_are_rendered_with_their_headers() -> None:
    with pytest.raises(UnsupportedTusVersion) as info:
        parse_request("PATCH", [(b"tus-resumable", b"0.2.2")], "tus")
    refused = decide_error("tus", info.value, limits=LIMITS, upload_id="u1")
    headers = headers_of(refused)
    assert refused.status == 412 and headers["Tus-Version"] == "1.0.0" and headers["X-Upload-ID"] == "u1"
    assert json.loads(refused.body) == {"error": {"code": "unsupported_version", "message": str(info.value)}}
    with pytest.raises(UnsupportedChecksum) as bad:
        parse_request("PATCH", [(b"tus-resumable", b"1.0.0"), (b"upload-checksum", b"crc32 AAAA")], "tus")
    assert decide_error("tus", bad.value, limits=LIMITS).status == 400


# The model: any sequence of appends, breaks, checksum failures and restarts -----------------------------

STEP = st.one_of(
    st.tuples(st.just("commit"), st.integers(0, 40)),
    st.tuples(st.just("break"), st.integers(0, 40)),
    st.tuples(st.just("checksum"), st.integers(0, 40)),
    st.tuples(st.just("overflow"), st.integers(1, 40)),
    st.tuples(st.just("crash"), st.integers(0, 40)),  # kill -9 mid-append, then restart
    st.tuples(st.just("restart"), st.just(0)),  # clean restart: info read back from JSON
)


class Model:
    """The glue in miniature: decisions in, a bytearray spool and an info document out."""

    def __init__(self, protocol: Protocol, file: bytes, deferred: bool) -> None:
        self.protocol, self.file = protocol, file
        self.spool = bytearray()
        self.upload = create(
            upload_id="m",
            route="/",
            target=b"/",
            protocol=protocol,
            now=NOW,
            expiry=10**9,
            length=None if deferred else len(file),
            metadata={},
        )
        self.info = self.upload.to_json()
        self.writers = itertools.count()

    def record(self, upload: ResumableUpload | None) -> None:
        if upload is not None:
            self.upload = upload
            self.info = upload.to_json()

    def check(self) -> None:
        if self.upload.state != FAILED:
            assert bytes(self.spool) == self.file[: self.upload.offset]

    def begin(self, complete: bool = False, checksum: bool = False) -> tuple[ResumableRequest, Decision, str]:
        extra = [(b"upload-checksum", b"sha1 " + b"A" * 27 + b"=")] if checksum else []
        if complete and self.protocol != "tus":
            extra.append((b"upload-complete", b"?1"))
        if complete and self.protocol == "tus" and self.upload.length is None:
            extra.append((b"upload-length", str(len(self.file)).encode()))
        req = patch(self.protocol, self.upload.offset, *extra)
        writer = f"w{next(self.writers)}"
        decision = decide_append_begin(req, self.upload, writer=writer, now=NOW, limits=Limits())
        assert decision.action in ("append", "forward"), decision
        assert decision.upload is not None
        self.upload = decision.upload
        if checksum:
            # The glue records a checksummed append before its first byte; other appends are not recorded
            # until they end, so a crash leaves the info file at the previous offset, the spool past it.
            self.info = self.upload.to_json()
        return req, decision, writer

    def send(self, decision: Decision, size: int, corrupt: bool = False) -> int:
        start = self.upload.offset
        room = decision.max_bytes if decision.max_bytes is not None else size
        data = self.file[start : start + min(size, room)]
        self.spool += bytes(b ^ 0xFF for b in data) if corrupt else data
        return len(data)

    def end(self, req: ResumableRequest, writer: str, written: int, **outcome: object) -> Decision:
        decision = decide_append_end(
            req, self.upload, writer=writer, written=written, now=NOW, limits=Limits(), **outcome
        )  # type: ignore[arg-type]
        self.record(decision.upload)
        if self.upload.state != FAILED:
            del self.spool[self.upload.offset :]  # the writer's discard / the glue's truncation
        return decision

    def step(self, kind: str, size: int) -> None:
        if self.upload.state != RECEIVING:
            return
        if kind == "restart":
            self.restart()
        elif kind == "crash":
            checksum = size % 2 == 1
            req, decision, writer = self.begin(checksum=checksum)
            # A checksummed append cut short cannot be verified: model its bytes as the corrupt ones they may be.
            self.send(decision, size, corrupt=checksum and self.protocol == "tus")
            self.restart()
        elif kind == "overflow":
            if self.upload.length is None:
                return
            req, decision, writer = self.begin()
            written = self.send(decision, self.upload.length)
            self.end(req, writer, written, ended=False, overflow=True)
        else:
            req, decision, writer = self.begin(checksum=kind == "checksum")
            written = self.send(decision, size, corrupt=kind == "checksum")
            if kind == "checksum":
                self.end(req, writer, written, ended=True, checksum_ok=False)
            else:
                self.end(req, writer, written, ended=kind == "commit")
        self.check()

    def restart(self) -> None:
        upload = ResumableUpload.from_json(self.info)
        upload, keep = recover(upload, len(self.spool), now=NOW)
        del self.spool[keep:]
        self.upload = upload
        self.info = upload.to_json()

    def finish(self) -> None:
        if self.upload.state != RECEIVING:
            return
        req, decision, writer = self.begin(complete=True)
        if decision.action == "append":
            written = self.send(decision, len(self.file))
            decision = self.end(req, writer, written, ended=True)
        else:
            self.record(decision.upload)


@settings(max_examples=300, deadline=None)
@given(
    protocol=st.sampled_from(PROTOCOLS),
    file=st.binary(min_size=0, max_size=120),
    deferred=st.booleans(),
    steps=st.lists(STEP, max_size=12),
)
def test_any_sequence_ends_byte_exact_or_not_at_all(
    protocol: Protocol, file: bytes, deferred: bool, steps: list[tuple[str, int]]
) -> None:
    model = Model(protocol, file, deferred)
    for kind, size in steps:
        model.step(kind, size)
        assert model.upload.offset <= len(file)
    model.finish()
    if model.upload.state == FAILED:
        return  # not at all: IETF 8 deactivates an upload that was sent bytes past its length
    if protocol == "ietf-6" and model.upload.state == RECEIVING:
        # -05 keeps bytes up to the length on an overflow and answers 400: the client completes with ?1
        model.finish()
    assert model.upload.state == FORWARDING
    assert bytes(model.spool) == file and model.upload.offset == model.upload.length == len(file)


def test_info_documents_stay_readable_across_versions() -> None:
    """A record with no kept answer is written as before those fields existed (an older relay, after a rollback or
    in a rolling deploy on one Redis, reads it), and fields a newer relay adds are ignored."""
    data = json.loads(new_upload().to_json())
    assert "answer_headers" not in data and "answer_body" not in data
    upload = ResumableUpload.from_json(json.dumps({**data, "added_by_a_newer_relay": [1, 2]}))
    assert upload == new_upload()

"""relay.core.concat: `Upload-Concat` parsing (good and hostile values), the final upload's decision, and the
hooks in relay.core.resumable / resumable_decisions (partial uploads never complete on their own, PATCH on a
final upload and DELETE of a claimed partial upload are 403). A model check: any split of a file into partial
uploads, each sent in any appends, concatenates byte-exact.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from relay.core.concat import (
    FINAL,
    MAX_PARTS,
    PARTIAL,
    Concat,
    claim,
    concat_header,
    decide_final,
    parse_concat,
    partial_id,
)
from relay.core.limits import Limits
from relay.core.resumable import (
    FAILED,
    FORWARDING,
    RECEIVING,
    TERMINATE,
    ResumableSettings,
    ResumableUpload,
    apply,
    create,
    recover,
)
from relay.core.resumable_decisions import (
    Decision,
    decide_append_begin,
    decide_append_end,
    decide_create,
    decide_delete,
    decide_options,
)
from relay.core.resumable_headers import ModifyFinal, Protocol, ResumableRequest, parse_request
from relay.errors import BadRequest, RelayError

NOW = 1_000_000.0
PREFIX = "/resumable/"
LIMITS = Limits(max_body_size=10_000, max_file_size=None)
SETTINGS = ResumableSettings(expiry=3600, max_incomplete=10, headroom=0)


def request(method: str, *headers: tuple[bytes, bytes], protocol: Protocol = "tus") -> ResumableRequest:
    base = [(b"tus-resumable", b"1.0.0")] if protocol == "tus" else [(b"upload-draft-interop-version", b"6")]
    return parse_request(method, base + list(headers), protocol)


def new_partial(upload_id: str, length: int, offset: int | None = None, **changes: object) -> ResumableUpload:
    upload = create(
        upload_id=upload_id,
        route="/upload/",
        target=b"/upload/parts",
        protocol="tus",
        now=NOW,
        expiry=3600,
        length=length,
        metadata={},
    )
    upload = replace(upload, concat=PARTIAL, offset=length if offset is None else offset)
    return replace(upload, **changes)  # type: ignore[arg-type]


def final_of(
    partials: list[ResumableUpload | None], req: ResumableRequest | None = None, **changes: object
) -> Decision:
    ids = tuple(p.id if p is not None else f"gone{i}" for i, p in enumerate(partials))
    arguments: dict[str, object] = {
        "upload_id": "fin",
        "route": "/upload/",
        "target": b"/upload/joined?x=1",
        "now": NOW,
        "limits": LIMITS,
        "settings": SETTINGS,
        **changes,
    }
    req = req or request("POST", (b"upload-metadata", b"filename ai5iaW4="))
    return decide_final(req, Concat(FINAL, ids), partials, **arguments)  # type: ignore[arg-type]


def error_of(decision: Decision) -> tuple[int | None, str | None]:
    return decision.status, decision.error.code if decision.error is not None else None


# Parsing ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"partial", Concat(PARTIAL)),
        (b"  partial\t", Concat(PARTIAL)),
        (b"final;/resumable/a /resumable/b", Concat(FINAL, ("a", "b"))),
        (b"final;http://relay.example/resumable/a https://h:8443/resumable/B-_9/", Concat(FINAL, ("a", "B-_9"))),
        (b"final; /resumable/a  \t/resumable/b ", Concat(FINAL, ("a", "b"))),
        (b"final;HTTP://host/resumable/x", Concat(FINAL, ("x",))),
        (b"final;/resumable/" + b"z" * 64, Concat(FINAL, ("z" * 64,))),
    ],
)
def test_parse_good_values(value: bytes, expected: Concat) -> None:
    assert parse_concat(value, PREFIX) == expected


def test_absent_is_none() -> None:
    assert parse_concat(None, PREFIX) is None


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"Partial",
        b"partial;x",
        b"partial final",
        b"final",
        b"final;",
        b"final; \t ",
        b"final,/resumable/a",
        b"final;/resumable/",
        b"final;/resumable//",
        b"final;/resumable/a/b",
        b"final;/resumable/a?x=1",
        b"final;/resumable/a#frag",
        b"final;/resumable/../resumable/a",
        b"final;/resumable/%2e%2e",
        b"final;/resumable/a%2Fb",
        b"final;/upload/a",
        b"final;resumable/a",
        b"final;/resumablea",
        b"final;ftp://h/resumable/a",
        b"final;javascript:/resumable/a",
        b"final;http://",
        b"final;http:///resumable/a",
        b"final;http://host",
        b"final;/resumable/" + b"z" * 65,
        b"final;/resumable/a /resumable/a",
        b"final;/resumable/a\x00",
        b"final;/resumable/a\x7f",
        "final;/resumable/é".encode("latin-1"),
        b"final;" + b" ".join(b"/resumable/p%d" % i for i in range(MAX_PARTS + 1)),
    ],
)
def test_parse_hostile_values(value: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_concat(value, PREFIX)


def test_the_drafts_have_no_concatenation() -> None:
    with pytest.raises(BadRequest):
        parse_concat(b"partial", PREFIX, "ietf-6")


def test_max_parts_is_allowed() -> None:
    value = b"final;" + b" ".join(b"/resumable/p%d" % i for i in range(MAX_PARTS))
    concat = parse_concat(value, PREFIX)
    assert concat is not None and len(concat.ids) == MAX_PARTS


@given(st.binary(max_size=300))
@settings(max_examples=400)
def test_any_bytes_parse_or_are_a_bad_request(value: bytes) -> None:
    try:
        concat = parse_concat(value, PREFIX)
    except BadRequest:
        return
    assert concat is not None
    for upload_id in concat.ids:  # whatever passes names an id of the relay's alphabet, nothing else
        assert upload_id and len(upload_id) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_") for c in upload_id)


def test_partial_id_under_another_prefix() -> None:
    assert partial_id("https://x/files/abc", "/files/") == "abc"


# The final upload -------------------------------------------------------------------------------------------


def test_final_is_created_forwarding_with_the_sum_of_its_partials() -> None:
    partials: list[ResumableUpload | None] = [new_partial("a", 300), new_partial("b", 0), new_partial("c", 5)]
    decision = final_of(partials)
    upload = decision.upload
    assert decision.action == "forward" and upload is not None
    assert upload.state == FORWARDING and upload.concat == FINAL
    assert upload.length == upload.offset == 305
    assert upload.parts == ("a", "b", "c") and upload.part_lengths == (300, 0, 5)
    assert upload.metadata == {"filename": "j.bin"} and upload.target == b"/upload/joined?x=1"
    assert upload.expires_at == NOW + SETTINGS.expiry


@pytest.mark.parametrize(
    ("partials", "status", "code"),
    [
        ([new_partial("a", 10), None], 404, "not_found"),
        ([new_partial("a", 10, state=FAILED)], 404, "not_found"),
        ([new_partial("a", 10, expires_at=NOW)], 404, "not_found"),
        ([new_partial("a", 10, concat=None)], 400, "bad_request"),
        ([new_partial("a", 10, concat=FINAL)], 400, "bad_request"),
        ([new_partial("a", 10, offset=9)], 400, "bad_request"),
        ([replace(new_partial("a", 10, offset=0), length=None)], 400, "bad_request"),
        ([new_partial("a", 10, final="other")], 400, "bad_request"),
        ([new_partial("a", 6000), new_partial("b", 5000)], 413, "body_too_large"),
    ],
)
def test_final_refusals(partials: list[ResumableUpload | None], status: int, code: str) -> None:
    decision = final_of(partials)
    assert error_of(decision) == (status, code)
    assert decision.upload is None and decision.action == "respond"
    assert (b"Tus-Resumable", b"1.0.0") in decision.headers


def test_a_partial_claimed_by_this_very_final_is_fine() -> None:
    assert final_of([new_partial("a", 10, final="fin")]).action == "forward"


def test_file_limit_applies_to_the_sum() -> None:
    decision = final_of([new_partial("a", 60), new_partial("b", 50)], limits=Limits(max_file_size=100))
    assert error_of(decision) == (413, "file_too_large")


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ([(b"upload-length", b"10")], 400, "bad_request"),
        ([(b"upload-defer-length", b"1")], 400, "bad_request"),
        ([(b"content-type", b"application/offset+octet-stream"), (b"content-length", b"3")], 403, "forbidden"),
        ([(b"content-type", b"application/offset+octet-stream")], 403, "forbidden"),  # chunked
    ],
)
def test_final_request_refusals(headers: list[tuple[bytes, bytes]], status: int, code: str) -> None:
    assert error_of(final_of([new_partial("a", 10)], request("POST", *headers))) == (status, code)


def test_an_empty_body_of_another_type_is_no_body() -> None:
    req = request("POST", (b"content-type", b"text/plain"), (b"content-length", b"0"))
    assert final_of([new_partial("a", 10)], req).action == "forward"


def test_final_in_a_draft_is_refused() -> None:
    req = request("POST", (b"upload-complete", b"?1"), protocol="ietf-6")
    assert error_of(final_of([new_partial("a", 10)], req)) == (400, "bad_request")


def test_claim_keeps_the_partial_past_its_final() -> None:
    final = final_of([new_partial("a", 10)]).upload
    assert final is not None
    claimed = claim(new_partial("a", 10), final)
    assert claimed.final == "fin" and claimed.expires_at == final.expires_at + claimed.expiry
    assert claimed.state == RECEIVING and claimed.offset == 10


def test_head_says_upload_concat() -> None:
    final = final_of([new_partial("a", 10), new_partial("b", 1)]).upload
    assert final is not None
    assert concat_header(final, PREFIX) == (b"Upload-Concat", b"final;/resumable/a /resumable/b")
    assert concat_header(new_partial("a", 1), PREFIX) == (b"Upload-Concat", b"partial")
    assert concat_header(replace(new_partial("a", 1), concat=None), PREFIX) is None


def test_discovery_offers_concatenation() -> None:
    headers = dict(decide_options("tus", LIMITS).headers)
    assert b"concatenation" in headers[b"Tus-Extension"].split(b",")


# The hooks in the resumable core ------------------------------------------------------------------------------


def test_patch_on_a_final_upload_is_forbidden() -> None:
    final = final_of([new_partial("a", 10)]).upload
    assert final is not None
    req = request(
        "PATCH",
        (b"upload-offset", b"10"),
        (b"content-type", b"application/offset+octet-stream"),
        (b"content-length", b"0"),
    )
    for state in (final, apply(final, "forward-ok", now=NOW, upstream_status=200)):
        decision = decide_append_begin(req, state, writer="w", now=NOW, limits=LIMITS)
        assert error_of(decision) == (403, ModifyFinal.code)
        assert decision.upload is None


def test_delete_of_a_claimed_partial_is_forbidden_and_of_a_free_one_terminates() -> None:
    req = request("DELETE")
    assert error_of(decide_delete(req, new_partial("a", 10, final="fin"), now=NOW)) == (403, "forbidden")
    free = decide_delete(req, new_partial("a", 10), now=NOW)
    assert free.action == "delete" and free.upload is not None and free.upload.state == FAILED


def test_a_partial_never_completes_on_its_own() -> None:
    req = request("POST", (b"upload-length", b"0"))
    created = decide_create(
        req,
        upload_id="p",
        route="/upload/",
        target=b"/upload/parts",
        location="/resumable/p",
        writer="w",
        now=NOW,
        limits=LIMITS,
        settings=SETTINGS,
        free_bytes=None,
        incomplete=0,
        partial=True,
    )
    assert created.status == 201 and created.upload is not None and created.upload.concat == PARTIAL
    upload = new_partial("p", 10, offset=0)
    patch = request(
        "PATCH",
        (b"upload-offset", b"0"),
        (b"content-type", b"application/offset+octet-stream"),
        (b"content-length", b"10"),
    )
    begun = decide_append_begin(patch, upload, writer="w", now=NOW, limits=LIMITS)
    assert begun.action == "append" and begun.upload is not None
    ended = decide_append_end(patch, begun.upload, writer="w", written=10, ended=True, now=NOW, limits=LIMITS)
    assert ended.status == 204 and ended.upload is not None
    assert ended.upload.state == RECEIVING and ended.upload.offset == 10  # complete, waiting for its final


def test_recovery_leaves_a_full_partial_waiting() -> None:
    upload, keep = recover(new_partial("p", 10, offset=7), 10, now=NOW)
    assert upload.state == RECEIVING and upload.offset == keep == 10


def test_json_round_trip_keeps_the_concatenation() -> None:
    final = final_of([new_partial("a", 10), new_partial("b", 2)]).upload
    assert final is not None
    assert ResumableUpload.from_json(final.to_json()) == final
    claimed = new_partial("a", 10, final="fin")
    assert ResumableUpload.from_json(claimed.to_json()) == claimed
    old = final.to_json().replace('"concat": "final", ', "")  # a document from before concatenation
    assert ResumableUpload.from_json(old).concat is None


def test_a_terminated_final_is_failed() -> None:
    final = final_of([new_partial("a", 10)]).upload
    assert final is not None
    assert apply(final, TERMINATE, now=NOW).state == FAILED


# Model: any split, any appends, byte-exact -------------------------------------------------------------------


@st.composite
def splits(draw: st.DrawFn) -> tuple[bytes, list[list[int]]]:
    """A file, its cut into partial uploads, and for each partial the sizes of its appends."""
    data = draw(st.binary(min_size=0, max_size=400))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    bounds = [0, *cuts, len(data)]
    appends = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        size = end - start
        steps = draw(st.lists(st.integers(1, max(size, 1)), max_size=5))
        chunks, left = [], size
        for step in steps:
            if left <= 0:
                break
            chunks.append(min(step, left))
            left -= chunks[-1]
        if left:
            chunks.append(left)
        appends.append(chunks)
    return data, appends


@given(splits(), st.permutations(range(7)))
@settings(max_examples=300, deadline=None)
def test_any_split_concatenates_byte_exact(split: tuple[bytes, list[list[int]]], order: list[int]) -> None:
    data, appends = split
    spool: dict[str, bytearray] = {}
    uploads: dict[str, ResumableUpload] = {}
    position = 0
    ids = []
    for index, chunks in enumerate(appends):
        upload_id = f"p{index}"
        ids.append(upload_id)
        size = sum(chunks)
        uploads[upload_id] = new_partial(upload_id, size, offset=0)
        spool[upload_id] = bytearray()
        piece = data[position : position + size]
        position += size
        offset = 0
        for chunk in chunks:
            req = request(
                "PATCH",
                (b"upload-offset", str(offset).encode()),
                (b"content-type", b"application/offset+octet-stream"),
                (b"content-length", str(chunk).encode()),
            )
            begun = decide_append_begin(req, uploads[upload_id], writer="w", now=NOW, limits=Limits())
            assert begun.action == "append" and begun.upload is not None
            spool[upload_id] += piece[offset : offset + chunk]
            ended = decide_append_end(
                req, begun.upload, writer="w", written=chunk, ended=True, now=NOW, limits=Limits()
            )
            assert ended.action == "respond" and ended.upload is not None  # never forwarded on its own
            uploads[upload_id] = ended.upload
            offset += chunk
    # the partials finished in any order; the final names them in the file's order
    for index in order:
        if index < len(ids):
            assert uploads[ids[index]].offset == uploads[ids[index]].length
    decision = final_of([uploads[i] for i in ids], limits=Limits())
    final = decision.upload
    assert final is not None and final.length == len(data)
    joined = b"".join(bytes(spool[part])[:size] for part, size in zip(final.parts, final.part_lengths, strict=True))
    assert joined == data


def test_errors_are_relay_errors() -> None:
    assert issubclass(ModifyFinal, RelayError) and ModifyFinal.status_code == 403

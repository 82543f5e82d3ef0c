"""Property tests on relay.headers: forwarding hygiene and the dot-segment rule against a reference."""

from __future__ import annotations

from hypothesis import example, given, settings, strategies as st

from relay.headers import forward_request_headers, has_dot_segment
from tests.fuzz.common import CORPUS, reference_has_dot_segment

# From the contract (relay-server, Headers), written out here rather than imported from relay.headers.
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-authorization",
    b"proxy-authenticate",
    b"proxy-connection",
}
RELAY_SET = {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-upload-id"}
NAMES = sorted(HOP_BY_HOP) + [
    b"host",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-upload-id",
    b"authorization",
    b"content-length",
    b"content-type",
    b"expect",
    b"x-custom",
    b"x-secret",
    b"cookie",
    b"forwarded",
]

token = st.from_regex(rb"\A[a-z0-9!#$%&'*+.^_`|~-]{1,12}\Z")
name = st.one_of(st.sampled_from(NAMES), token)
value = st.binary(max_size=40).map(lambda b: bytes(c for c in b if c not in b"\r\n\x00"))


@st.composite
def connection_value(draw: st.DrawFn) -> bytes:
    tokens = draw(st.lists(st.one_of(st.sampled_from(NAMES), token), max_size=4))
    seps = draw(st.lists(st.sampled_from([b",", b", ", b" ,\t", b",,"]), min_size=len(tokens), max_size=len(tokens)))
    cased = [t.upper() if draw(st.booleans()) else t for t in tokens]
    return b"".join(t + s for t, s in zip(cased, seps, strict=True))


header = st.one_of(st.tuples(name, value), st.tuples(st.just(b"connection"), connection_value()))
peer = st.one_of(st.none(), st.sampled_from(["127.0.0.1", "10.1.2.3", "::1"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(header, max_size=14), peer, st.sampled_from(["http", "https"]), st.booleans(), st.booleans())
def test_forwarded_headers_are_clean(
    headers: list[tuple[bytes, bytes]], peer: str | None, scheme: str, trust: bool, strip_auth: bool
) -> None:
    out = forward_request_headers(
        headers, peer=peer, scheme=scheme, upload_id="up-1", trust_forwarded=trust, strip_authorization=strip_auth
    )
    named = {t.strip().lower() for k, v in headers if k == b"connection" for t in v.split(b",") if t.strip()}
    names = [k for k, _ in out]
    for key, val in out:
        assert key == key.lower()
        assert key not in HOP_BY_HOP, key
        assert key != b"host" and key != b"content-length" and key != b"expect"
        if key not in RELAY_SET:
            assert key not in named, (key, named)
        assert not set(val) & set(b"\r\n\x00")
    if strip_auth:
        assert b"authorization" not in names
    assert [v for k, v in out if k == b"x-upload-id"] == [b"up-1"]
    assert [v for k, v in out if k == b"x-forwarded-proto"] == [scheme.encode()]
    xff = [v for k, v in out if k == b"x-forwarded-for"]
    client_xff = [v.strip() for k, v in headers if k == b"x-forwarded-for"]
    chain = (client_xff if trust else []) + ([peer.encode()] if peer else [])
    assert xff == ([b", ".join(chain)] if chain else [])
    if not trust:
        for v in client_xff:  # a client's own value never survives untrusted
            if v and v != (peer or "").encode():
                assert all(v not in x.split(b", ") for x in xff)
    # Every end-to-end client header the relay has no reason to drop goes through, in order, unchanged.
    dropped = (
        HOP_BY_HOP
        | named
        | RELAY_SET
        | {b"host", b"content-length", b"expect"}
        | ({b"authorization"} if strip_auth else set())
    )
    kept = [(k, v) for k, v in headers if k not in dropped]
    assert [(k, v) for k, v in out if k not in RELAY_SET] == kept


PATH_PIECES = [
    b".",
    b"..",
    b"/",
    b"\\",
    b"%2e",
    b"%2E",
    b"%2f",
    b"%2F",
    b"%5c",
    b"%5C",
    b"%25",
    b"%",
    b"%2",
    b"%zz",
    b";",
    b"a",
    b"%c0%ae",
    b"%00",
    b"?",
    b"%3f",
    b" ",
    b"...",
]


@settings(max_examples=800, deadline=None)
@given(st.one_of(st.lists(st.sampled_from(PATH_PIECES), max_size=10).map(b"".join), st.binary(max_size=30)))
@example(b"/upload/%2e%2e%2f_relay/")
@example(b"/upload/%252e%252e")
@example(b"/upload/%c0%ae%c0%ae")
@example(b"/upload/..;/x")
def test_has_dot_segment_agrees_with_the_contract(path: bytes) -> None:
    assert has_dot_segment(b"/upload/" + path) == reference_has_dot_segment(b"/upload/" + path)


def test_path_corpus_agrees_with_the_contract() -> None:
    lines = (CORPUS / "paths.txt").read_bytes().splitlines()
    checked = 0
    for line in lines:
        if not line or line.startswith(b"#"):
            continue
        path, _, want = line.rpartition(b" ")
        assert want in (b"dot", b"ok"), line
        assert reference_has_dot_segment(path) == (want == b"dot"), line
        assert has_dot_segment(path) == (want == b"dot"), line
        checked += 1
    assert checked >= 40

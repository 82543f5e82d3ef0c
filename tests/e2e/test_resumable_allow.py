"""A resumable request a route refuses with 405 names in `Allow` what that URL really takes.

On a `[[routes]]` entry with `methods = ["PUT"]`, a tus creation POST used to get 405 with `Allow: POST, OPTIONS`,
naming the very method it refused. `Allow` (RFC 9110 10.2.1) lists the methods the target resource supports:
on a routed path, the route's own methods (its plain uploads) and OPTIONS (tus discovery, since the route takes
resumable uploads). POST is there only when the route takes it, and then tus creation is possible. A real relay
with a config file; each answer's Allow is compared with what the same URL then actually does.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from relay.testing import RunningServer, start_relay

ROUTES = """
[[routes]]
prefix = "/put-only/"
methods = ["PUT"]

[[routes]]
prefix = "/put-patch/"
methods = ["PATCH", "PUT"]

[[routes]]
prefix = "/upload/"
methods = ["POST", "PUT"]
"""

TUS_CREATE = {"Tus-Resumable": "1.0.0", "Upload-Length": "5"}
IETF_CREATE = {"Upload-Draft-Interop-Version": "8", "Upload-Complete": "?0", "Content-Length": "0"}


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A relay with three routes and its embedded sink (no --upstream)."""
    tmp = tmp_path_factory.mktemp("allow")
    config = tmp / "relay.toml"
    config.write_text(ROUTES)
    server = start_relay("--config", str(config), "--store", str(tmp / "received"), "--spool", str(tmp / "spool"))
    yield server
    server.stop()


def allowed(response: httpx.Response) -> list[str]:
    return [method.strip() for method in response.headers["allow"].split(",")]


@pytest.mark.parametrize("create", [TUS_CREATE, IETF_CREATE], ids=["tus", "ietf"])
@pytest.mark.parametrize(
    ("path", "allow"),
    [("/put-only/f.bin", ["PUT", "OPTIONS"]), ("/put-patch/f.bin", ["PATCH", "PUT", "OPTIONS"])],
)
def test_a_refused_creation_is_not_told_to_use_post(
    relay: RunningServer, create: dict[str, str], path: str, allow: list[str]
) -> None:
    with httpx.Client(base_url=relay.url) as client:
        refused = client.post(path, headers=create)
        assert refused.status_code == 405, refused.text
        assert refused.json()["error"]["code"] == "method_not_allowed"
        assert allowed(refused) == allow
        # Every method it names is one the URL takes: a plain PUT is relayed, OPTIONS is discovery.
        assert client.put(path, content=b"hello").status_code == 200
        assert client.options(path, headers={"Tus-Resumable": "1.0.0"}).status_code == 204


def test_a_route_that_takes_post_names_it(relay: RunningServer) -> None:
    with httpx.Client(base_url=relay.url) as client:
        # A tus request with a method other than POST on a routed path is refused; POST is the way to create.
        refused = client.put("/upload/f.bin", headers=TUS_CREATE)
        assert refused.status_code == 405, refused.text
        assert allowed(refused) == ["POST", "PUT", "OPTIONS"]
        created = client.post("/upload/f.bin", headers=TUS_CREATE)
        assert created.status_code == 201, created.text
        assert client.delete(created.headers["location"], headers={"Tus-Resumable": "1.0.0"}).status_code == 204


@pytest.mark.parametrize("headers", [{}, {"Tus-Resumable": "1.0.0"}, {"Tus-Resumable": "0.2.2"}], ids=str)
def test_the_resumable_prefix_routes_before_it_reads_the_protocol(
    relay: RunningServer, headers: dict[str, str]
) -> None:
    """endpoints.py Rule 7 (contract: other methods 405, other paths 404): a GET without Tus-Resumable was a 412."""
    with httpx.Client(base_url=relay.url) as client:
        for method in ("GET", "PUT"):
            wrong = client.request(method, "/resumable/abcdefgh", headers=headers)
            assert wrong.status_code == 405, (method, wrong.text)
            assert allowed(wrong) == ["HEAD", "PATCH", "DELETE", "OPTIONS"]
            assert wrong.json()["error"]["code"] == "method_not_allowed"
            assert wrong.headers["x-upload-id"] == "abcdefgh"
        overridden = client.post("/resumable/abcdefgh", headers={**headers, "X-HTTP-Method-Override": "GET"})
        assert overridden.status_code == 405
        for method in ("GET", "DELETE", "PATCH"):
            assert client.request(method, "/resumable/", headers=headers).status_code == 404, method
        assert client.head("/resumable/nosuchupload", headers=headers).status_code == (
            404 if headers.get("Tus-Resumable") == "1.0.0" else 412
        )

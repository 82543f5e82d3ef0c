"""HTTPS upstreams (issue 10, defect 6): verified delivery, an untrusted certificate refused with a reason,
and `--upstream-ca` trusting a private CA. Certificates from `trustme`; a real TLS test upstream."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from relay.testing import RunningServer, start_relay
from tests.conftest import start_test_upstream


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_upstream(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A recorder over TLS with a certificate for 127.0.0.1 and localhost; yields its https URL and the CA file."""
    folder = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    server = start_test_upstream("tls-recorder", env={"TLS_CERT": str(cert_file), "TLS_KEY": str(key_file)})
    yield server.url.replace("http://", "https://"), ca_file
    server.stop()


def post_through(relay: RunningServer, body: bytes) -> httpx.Response:
    return httpx.post(f"{relay.url}/upload/tls/x.bin", content=body, timeout=30)


def test_an_https_upstream_trusted_with_upstream_ca_gets_the_body(tls_upstream: tuple[str, Path]) -> None:
    url, ca_file = tls_upstream
    body = bytes(range(256)) * 40_000  # 10 MB, many TLS records
    relay = start_relay("--upstream-ca", str(ca_file), upstream=url)
    try:
        response = post_through(relay, body)
        again = post_through(relay, b"kept alive over TLS")
    finally:
        relay.stop()
    assert response.status_code == 200, response.text
    assert response.json()["sha256"] == hashlib.sha256(body).hexdigest()
    assert again.json()["sha256"] == hashlib.sha256(b"kept alive over TLS").hexdigest()
    assert again.json()["seen"] == response.json()["seen"]  # the TLS connection was reused


def test_an_untrusted_certificate_is_502_upstream_unavailable_saying_why(tls_upstream: tuple[str, Path]) -> None:
    url, _ = tls_upstream
    relay = start_relay(upstream=url)  # the system CAs do not know trustme's CA
    try:
        response = post_through(relay, b"secret")
        log = relay.log()
    finally:
        relay.stop()
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_unavailable"
    assert "certificate" in error["message"] and "--upstream-ca" in error["message"]
    assert "Traceback" not in log


@pytest.mark.parametrize(("content", "says"), [(None, "no such file"), ("not a pem", "not a PEM file")])
def test_a_bad_upstream_ca_is_one_line_and_exit_2(tmp_path: Path, content: str | None, says: str) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    done = subprocess.run(
        [sys.executable, "-m", "relay", "--port", "0", "--upstream", "https://127.0.0.1:9", "--upstream-ca", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr

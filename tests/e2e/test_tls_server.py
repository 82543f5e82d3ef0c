"""TLS termination (issue 16 item 2): relay-server --ssl-certfile/--ssl-keyfile with a real certificate from
`trustme`, verified by curl and httpx; a multipart upload through TLS arrives byte-exact at the sink; bad or
missing certificate files are one line on stderr and exit 2."""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from relay.testing import RunningServer, start_relay, start_sink
from tests.conftest import tricky_bytes


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, and a certificate for 127.0.0.1 and localhost issued by it, as PEM files."""
    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {"cert": folder / "cert.pem", "key": folder / "key.pem", "ca": folder / "ca.pem"}
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(files["cert"]), append=True)
    cert.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    return files


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    store = tmp_path_factory.mktemp("received")
    server = start_sink(store)
    yield server, store
    server.stop()


@pytest.fixture(scope="module")
def tls_relay(tls_files: dict[str, Path], sink: tuple[RunningServer, Path]) -> Iterator[RunningServer]:
    relay = start_relay(
        "--ssl-certfile", str(tls_files["cert"]), "--ssl-keyfile", str(tls_files["key"]), upstream=sink[0].url
    )
    yield relay
    relay.stop()


def test_the_listening_line_says_https(tls_relay: RunningServer) -> None:
    assert tls_relay.url.startswith("https://127.0.0.1:"), tls_relay.url
    assert f"listening on {tls_relay.url}" in tls_relay.log()


def test_httpx_verifies_the_certificate_and_a_multipart_upload_arrives_byte_exact(
    tls_relay: RunningServer, tls_files: dict[str, Path], sink: tuple[RunningServer, Path]
) -> None:
    data = tricky_bytes(3_000_000, seed=16)
    with httpx.Client(verify=ssl.create_default_context(cafile=tls_files["ca"]), timeout=30) as client:
        response = client.post(
            f"{tls_relay.url}/upload/tls/photo", files={"file": ("photo.bin", data)}, data={"note": "over TLS"}
        )
    assert response.status_code == 200, response.text
    upload_id = response.headers["x-upload-id"]
    stored = [path for path in (sink[1] / upload_id).rglob("*") if path.is_file()]
    assert [path.name for path in stored] == ["photo.bin"]
    assert hashlib.sha256(stored[0].read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert response.headers["x-upload-sha256"] == hashlib.sha256(data).hexdigest()


def test_curl_verifies_the_certificate(tls_relay: RunningServer, tls_files: dict[str, Path], tmp_path: Path) -> None:
    body = tmp_path / "body.bin"
    body.write_bytes(b"curl over TLS\n" * 1000)
    result = subprocess.run(
        ["curl", "-sS", "--fail", "--cacert", str(tls_files["ca"]), "-F", f"file=@{body}", f"{tls_relay.url}/upload/c"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert '"size":14000' in result.stdout.replace(" ", ""), result.stdout


def test_a_client_without_the_ca_refuses_the_certificate(tls_relay: RunningServer) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tls_relay.url}/_relay/health", timeout=10)
    plain = tls_relay.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):  # plain HTTP to a TLS port gets no HTTP answer
        httpx.get(f"{plain}/_relay/health", timeout=10)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("RELAY_")}
    return subprocess.run(
        [sys.executable, "-m", "relay", "--port", "0", "--upstream", "http://127.0.0.1:9", *args],
        capture_output=True,
        text=True,
        timeout=20,
        env=clean,
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--ssl-certfile", "{cert}"], "--ssl-certfile needs --ssl-keyfile"),
        (["--ssl-keyfile", "{key}"], "--ssl-keyfile needs --ssl-certfile"),
        (["--ssl-certfile", "{tmp}/none.pem", "--ssl-keyfile", "{key}"], "none.pem: No such file or directory"),
        (["--ssl-certfile", "{cert}", "--ssl-keyfile", "{tmp}/garbage.pem"], "not a PEM certificate"),
        (["--ssl-certfile", "{ca}", "--ssl-keyfile", "{key}"], "not a PEM certificate"),
    ],
)
def test_bad_tls_files_are_one_line_and_exit_2(
    tls_files: dict[str, Path], tmp_path: Path, args: list[str], words: str
) -> None:
    (tmp_path / "garbage.pem").write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    names = {"cert": tls_files["cert"], "key": tls_files["key"], "ca": tls_files["ca"], "tmp": tmp_path}
    result = run_cli(*[arg.format(**names) for arg in args])
    assert result.returncode == 2, result
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("relay-server: error: ") and words in result.stderr, result.stderr


def test_tls_from_the_environment(tls_files: dict[str, Path], sink: tuple[RunningServer, Path]) -> None:
    env = {"RELAY_SSL_CERTFILE": str(tls_files["cert"]), "RELAY_SSL_KEYFILE": str(tls_files["key"])}
    relay = start_relay(upstream=sink[0].url, env=env)
    try:
        assert relay.url.startswith("https://")
        response = httpx.head(
            f"{relay.url}/_relay/health", verify=ssl.create_default_context(cafile=tls_files["ca"]), timeout=10
        )
    finally:
        relay.stop()
    assert response.status_code == 200

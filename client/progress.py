"""The Rich progress view on stderr: one row per file, a total row, and with --events what the relay received.

Only shown when stderr is a terminal and neither --quiet nor --json is given (cli.py decides). `console` and
`get_time` are injectable so tests can render exact frames with a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich import filesize
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Column

from client.upload import LocalFile

__all__ = ["RequestProgress", "UploadView"]


class UploadView:
    """Progress rows for a set of files; `request()` hands out an observer for one request's files."""

    def __init__(
        self,
        console: Console,
        *,
        events: bool = False,
        get_time: Callable[[], float] | None = None,
        auto_refresh: bool = True,
    ) -> None:
        # The columns httpx's own CLI uses for downloads: bar, percent, size, speed, plus the ETA.
        columns: list[ProgressColumn] = [
            TextColumn("{task.description}", table_column=Column(max_width=32, no_wrap=True, overflow="ellipsis")),
            BarColumn(bar_width=24),
            TaskProgressColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        ]
        if events:
            columns.append(TextColumn("{task.fields[relay]}"))
        self.progress = Progress(
            *columns, console=console, get_time=get_time, auto_refresh=auto_refresh, refresh_per_second=5
        )
        self.total_task: TaskID | None = None

    def __enter__(self) -> UploadView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def add_files(self, files: Sequence[LocalFile]) -> list[TaskID]:
        # The base name: a long directory would push the numbers off the row.
        tasks = [self.progress.add_task(escape(f.name), total=f.size, relay="") for f in files]
        if len(files) > 1:
            self.total_task = self.progress.add_task("[bold]total", total=sum(f.size for f in files), relay="")
        return tasks

    def request(self, file_tasks: Sequence[TaskID], relay_task: TaskID | None = None) -> RequestProgress:
        """An observer for one request; relay byte counts go on `relay_task` (default: the only file's row)."""
        if relay_task is None:
            relay_task = file_tasks[0] if len(file_tasks) == 1 else self.total_task
        return RequestProgress(self, list(file_tasks), relay_task)

    def refresh(self) -> None:
        self.progress.refresh()


class RequestProgress:
    """Implements upload.UploadObserver on top of an UploadView."""

    def __init__(self, view: UploadView, file_tasks: list[TaskID], relay_task: TaskID | None) -> None:
        self.view = view
        self.file_tasks = file_tasks
        self.relay_task = relay_task
        self.relay_text = ""

    def file_sent(self, index: int, nbytes: int) -> None:
        progress = self.view.progress
        progress.advance(self.file_tasks[index], nbytes)
        if self.view.total_task is not None:
            progress.advance(self.view.total_task, nbytes)

    def relay_received(self, nbytes: int, total: int | None) -> None:
        if self.relay_task is None:
            return
        self.relay_text = f"relay {_amount(nbytes, total)}"
        self.view.progress.update(self.relay_task, relay=self.relay_text)

    def part_verified(self, index: int, ok: bool) -> None:
        mark = "[green]sha256 ok[/]" if ok else "[bold red]sha256 MISMATCH[/]"
        task = self.file_tasks[index]
        text = f"{self.relay_text} {mark}".strip() if task == self.relay_task else mark
        self.view.progress.update(task, relay=text)


def _amount(done: int, total: int | None) -> str:
    """`1.5/5.0 MB`, the way DownloadColumn writes sent bytes, so the two read side by side."""
    if total is None:
        return filesize.decimal(done)
    unit, suffix = filesize.pick_unit_and_suffix(total, ["bytes", "kB", "MB", "GB", "TB", "PB"], 1000)
    precision = 0 if unit == 1 else 1
    return f"{done / unit:,.{precision}f}/{total / unit:,.{precision}f} {suffix}"

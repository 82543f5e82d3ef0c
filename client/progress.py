"""The Rich progress view on stderr: a row per file being sent, a total row, and with --events what the relay received.

Only shown when stderr is a terminal and neither --quiet nor --json is given (cli.py decides). `console` and
`get_time` are injectable so tests can render exact frames with a fake clock.

When there are more files than the terminal has rows, a row per file would be cut by the live display (rows
1 to N, then "...", the total lost). Then the view is *compact*: a file's row is shown only while its bytes
flow, and the total row counts the files done, so the active rows and the total always fit.
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

from client.sources import LocalFile

__all__ = ["RequestProgress", "UploadView"]

# Rows the live display needs besides the file rows: the total, and one spare so nothing scrolls.
_SPARE_ROWS = 2


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
        self.compact = False
        self.files_done = 0
        self.files_count = 0
        self._done: set[TaskID] = set()
        self._shown: set[TaskID] = set()
        # Sizes and bytes sent per file row, kept here: Rich's own task list is copied on every read.
        self._sizes: dict[TaskID, int | None] = {}
        self._sent: dict[TaskID, int] = {}

    def __enter__(self) -> UploadView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def add_files(self, files: Sequence[LocalFile]) -> list[TaskID]:
        self.files_count = len(files)
        self.compact = len(files) + _SPARE_ROWS > self.progress.console.height
        # The base name: a long directory would push the numbers off the row.
        tasks = [
            self.progress.add_task(escape(f.name), total=f.size, relay="", visible=not self.compact) for f in files
        ]
        self._sizes = {task: f.size for task, f in zip(tasks, files, strict=True)}
        self._sent = dict.fromkeys(tasks, 0)
        if len(files) > 1:
            total = None if None in (f.size for f in files) else sum(f.size or 0 for f in files)
            self.total_task = self.progress.add_task(self._total_label(), total=total, relay="")
        return tasks

    def request(self, file_tasks: Sequence[TaskID], relay_task: TaskID | None = None) -> RequestProgress:
        """An observer for one request; relay byte counts go on `relay_task` (default: the only file's row)."""
        if relay_task is None:
            relay_task = file_tasks[0] if len(file_tasks) == 1 else self.total_task
        return RequestProgress(self, list(file_tasks), relay_task)

    def refresh(self) -> None:
        self.progress.refresh()

    def note(self, text: str) -> None:
        """A line above the live rows (a retry, say), kept on screen after the display ends."""
        self.progress.console.print(text, markup=False, highlight=False)

    def _total_label(self) -> str:
        if not self.compact:
            return "[bold]total"
        return f"[bold]total[/] {self.files_done}/{self.files_count} files"

    def advanced(self, task: TaskID, nbytes: int) -> None:
        """After bytes of `task` went: in compact mode show its row while it runs, hide it once it is whole."""
        self._sent[task] = self._sent.get(task, 0) + nbytes
        if not self.compact or task in self._done:
            return
        size = self._sizes.get(task)
        if size is not None and self._sent[task] >= size:
            self.finished(task)
        elif task not in self._shown:
            self._shown.add(task)
            self.progress.update(task, visible=True)

    def rewound(self, task: TaskID) -> None:
        """`task` starts again from its first byte (a retried request)."""
        self._sent[task] = 0
        self._shown.discard(task)
        self.progress.reset(task, visible=not self.compact)

    def moved(self, task: TaskID, offset: int) -> None:
        """`task` stands at `offset` (a resumable upload: what the relay holds), not where the bytes sent put it."""
        self._sent[task] = offset
        # reset() also drops the speed samples: a jump to a resumed offset is not bytes sent just now.
        self.progress.reset(task, completed=offset, visible=not self.compact or task in self._shown)

    def finished(self, task: TaskID) -> None:
        """`task` is over (sent whole, or its request ended): in compact mode its row folds into the count."""
        if task in self._done:
            return
        self._done.add(task)
        self.files_done += 1
        if self.compact:
            self.progress.update(task, visible=False)
            if self.total_task is not None:
                self.progress.update(self.total_task, description=self._total_label())


class RequestProgress:
    """Implements upload.UploadObserver on top of an UploadView."""

    def __init__(self, view: UploadView, file_tasks: list[TaskID], relay_task: TaskID | None) -> None:
        self.view = view
        self.file_tasks = file_tasks
        self.relay_task = relay_task
        self.relay_text = ""
        self.sent = 0

    def file_sent(self, index: int, nbytes: int) -> None:
        progress = self.view.progress
        self.sent += nbytes
        progress.advance(self.file_tasks[index], nbytes)
        if self.view.total_task is not None:
            progress.advance(self.view.total_task, nbytes)
        self.view.advanced(self.file_tasks[index], nbytes)

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

    def moved_to(self, index: int, offset: int) -> None:
        """The relay holds the file's first `offset` bytes (resumed, or rewound after a broken append)."""
        task = self.file_tasks[index]
        shown = self.view._sent.get(task, 0)
        if offset == shown:
            return
        self.view.moved(task, offset)
        if self.view.total_task is not None:
            self.view.progress.advance(self.view.total_task, offset - shown)
        self.sent += offset - shown

    def restart(self) -> None:
        """The request is sent again: its bytes so far no longer count."""
        progress = self.view.progress
        for task in self.file_tasks:
            self.view.rewound(task)
        if self.view.total_task is not None:
            progress.advance(self.view.total_task, -self.sent)
        self.sent = 0

    def done(self) -> None:
        for task in self.file_tasks:
            self.view.finished(task)


def _amount(done: int, total: int | None) -> str:
    """`1.5/5.0 MB`, the way DownloadColumn writes sent bytes, so the two read side by side."""
    if total is None:
        return filesize.decimal(done)
    unit, suffix = filesize.pick_unit_and_suffix(total, ["bytes", "kB", "MB", "GB", "TB", "PB"], 1000)
    precision = 0 if unit == 1 else 1
    return f"{done / unit:,.{precision}f}/{total / unit:,.{precision}f} {suffix}"

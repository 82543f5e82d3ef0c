"""relay-upload's output: the program's name, one-line errors on stderr, the report of every request, bench tables.

Every error is one `relay-upload: error: ...` line on stderr (a filename with a newline cannot break it). A run
reports every request: JSON lines on stdout with --json, else a summary table (not with --quiet), then one error
line per failed request; its exit code is the worst request's (1 for an HTTP error or a sha256 mismatch, 3 for
the network), as client/cli.py's docstring lists. A run interrupted by Ctrl-C still prints, with --json, one
object per request: status null, error "interrupted", and what was known when it stopped (bytes sent, the
upload's URL for a resumable upload that had one).
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from client.bench import BenchResult
from client.errors import UploadError
from client.report import render_summary, result_line
from client.results import FileResult, ResumableInfo, UploadResult, error_summary
from client.sources import LocalFile

__all__ = ["PROG", "Outcome", "fail", "print_bench", "print_interrupted", "report_outcomes"]

PROG = "relay-upload"


def fail(message: str) -> None:
    # One line, always: a filename with a newline must not break the "one line on stderr" promise.
    line = " ".join(str(message).split())
    sys.stderr.write(f"{PROG}: error: {line}\n")
    sys.stderr.flush()


Outcome = UploadResult | UploadError


def as_result(group: list[LocalFile], outcome: Outcome) -> UploadResult:
    """Every request has a result for the report, failed ones too (status None and the error)."""
    if isinstance(outcome, UploadResult):
        return outcome
    if outcome.result is not None:
        return outcome.result
    files = [FileResult(f.path, f.size, None) for f in group]
    return UploadResult(None, None, 0, 0.0, files, None, error=str(outcome))


def report_outcomes(outcomes: list[tuple[list[LocalFile], Outcome]], *, as_json: bool, quiet: bool) -> int:
    """Print a result for every request (JSON lines or a summary), one error line per failed request."""
    results = [as_result(group, outcome) for group, outcome in outcomes]
    if as_json:
        for result in results:
            sys.stdout.write(result_line(result) + "\n")
        sys.stdout.flush()
    elif results and not quiet:
        render_summary(Console(), results)
    code = 0
    for (group, outcome), result in zip(outcomes, results, strict=True):
        if result.ok:
            continue
        prefix = f"{group[0].path}: " if len(outcomes) > 1 else ""
        fail(prefix + error_summary(result))
        code = max(code, outcome.exit_code if isinstance(outcome, UploadError) else 1)
    return code


def print_interrupted(
    groups: list[list[LocalFile]], interrupted: dict[int, UploadResult], *, protocol: str | None = None
) -> None:
    """--json after Ctrl-C: an object for every request, started (`interrupted`, by index) or not.

    `protocol`: the resumable protocol, so that a resumable upload that had not started still says
    `"resumable": true` (with no upload_url: this run never learnt one).
    """
    for index, group in enumerate(groups):
        result = interrupted.get(index)
        if result is None:
            files = [FileResult(f.path, f.size, None) for f in group]
            result = UploadResult(None, None, 0, 0.0, files, None, error="interrupted", attempts=0)
            result.resumable = ResumableInfo(protocol) if protocol is not None else None
        sys.stdout.write(result_line(result) + "\n")
    sys.stdout.flush()


def print_bench(console: Console, result: BenchResult, concurrency: int) -> None:
    table = Table(box=None, header_style="bold", title=f"{result.size:,} bytes x {concurrency}, {result.runs} runs")
    for name in ("target", "median MB/s", "min MB/s", "max MB/s"):
        table.add_column(name, justify="left" if name == "target" else "right")
    for target, stats in (("relay", result.relay), ("direct", result.direct)):
        if stats is not None:
            table.add_row(target, f"{stats.median_mbps:.1f}", f"{stats.min_mbps:.1f}", f"{stats.max_mbps:.1f}")
    console.print(table)
    if result.ratio is not None:
        console.print(f"relay/direct: {result.ratio:.2f}")

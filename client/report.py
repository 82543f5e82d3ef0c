"""UploadResult -> the contract's --json object, or a summary for humans (a table on a wide terminal, plain
lines in a pipe or below 80 columns, so a file name is never broken in the middle of a word).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from client.results import FileResult, UploadResult, error_summary

__all__ = ["answer_summary", "render_summary", "result_json", "result_line", "short_sha", "shorten_middle"]

# Below this the table's fixed columns leave too little for names: plain lines instead.
MIN_TABLE_WIDTH = 80
# The least room the two free-text columns (file, upstream says) need together for a table to be worth it.
MIN_FREE_WIDTH = 36


def file_json(file: FileResult, with_relay: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "path": file.path,
        "size": file.size,
        "sha256": file.sha256,
        "bytes_sent": file.sent,
        "partial": file.partial,
        "seconds": round(file.seconds, 6),
        "throughput_mbps": round(file.throughput_mbps, 3),
    }
    if with_relay:
        entry["relay"] = {"size": file.relay_size, "sha256": file.relay_sha256, "match": file.match}
    return entry


def result_json(result: UploadResult) -> dict[str, Any]:
    """The contract's object, keys in contract order, then what this client adds (attempts, events, error)."""
    with_relay = result.relay_parts is not None
    out: dict[str, Any] = {
        "status": result.status,
        "upload_id": result.upload_id,
        "bytes_sent": result.bytes_sent,
        "seconds": round(result.seconds, 6),
        "throughput_mbps": round(result.throughput_mbps, 3),
        "files": [file_json(f, with_relay) for f in result.files],
        # A partial read has no digest: null here, never the digest of the bytes that happened to be read.
        "sha256": {f.path: f.sha256 for f in result.files},
        "response": result.response,
        "attempts": result.attempts,
    }
    if with_relay:
        out["relay_bytes"] = result.relay_bytes
    if result.resumable is not None:
        info = result.resumable
        out.update(
            resumable=True,
            upload_url=info.upload_url,
            resumed_from=info.resumed_from,
            protocol=info.protocol,
            upstream_status=info.upstream_status,
            relay_sha256=result.files[0].relay_sha256 if result.files else None,
        )
    if not result.ok:
        out["error"] = error_summary(result)
    return out


def result_line(result: UploadResult) -> str:
    return json.dumps(result_json(result), ensure_ascii=False)


def answer_summary(result: UploadResult, index: int) -> str:
    """What the upstream (and with --events the relay) said about file `index`, in a few words."""
    file = result.files[index]
    if result.status is None:
        return result.error or "no answer"
    response = result.response
    words = _upstream_words(response, index, file)
    info = result.resumable
    if info is not None:
        if info.upstream_status is not None and not _has_files(response):
            words = f"upstream {info.upstream_status}"  # tus: the relay's 204 says it, the body is not relayed
        if info.resumed_from:
            words += f"; resumed at {info.resumed_from:,}"
    if file.match is not None:
        words += "; relay sha256 ok" if file.match else "; relay sha256 MISMATCH"
    return words


def _has_files(response: Any) -> bool:
    return isinstance(response, dict) and isinstance(response.get("files") or response.get("error"), list | dict)


def _upstream_words(response: Any, index: int, file: FileResult) -> str:
    if isinstance(response, dict):
        error = response.get("error")
        if isinstance(error, dict):
            return f"{error.get('code', 'error')}: {error.get('message', '')}"
        files = response.get("files")
        if isinstance(files, list) and index < len(files) and isinstance(files[index], dict):
            stored = files[index].get("sha256")
            if stored is None or file.sha256 is None:
                return "received"
            return "sha256 matches" if stored == file.sha256 else "sha256 DIFFERS"
        text = json.dumps(response, ensure_ascii=False)
    else:
        text = str(response)
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:59] + "…"


def short_sha(hexdigest: str | None, sent: int = 0) -> str:
    # The table is for eyes; the full digest is in --json. 12 hex digits still tell files apart.
    if hexdigest is None:
        return "(partial)" if sent else "(not sent)"
    return hexdigest[:12] + "…"


def shorten_middle(text: str, width: int) -> str:
    """`photos/2026/…/IMG_0001.jpg`: cut in the middle, keeping more of the end, where the file name is."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    head = (width - 1) // 3
    tail = width - 1 - head
    return text[:head] + "…" + text[-tail:]


def _size(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _rows(results: Sequence[UploadResult]) -> list[tuple[UploadResult, FileResult, dict[str, str]]]:
    rows = []
    for result in results:
        status = "failed" if result.status is None else str(result.status)
        for index, file in enumerate(result.files):
            cells = {
                "file": file.path,
                "size": _size(file.size),
                "sent": _size(file.sent),
                "sha256": short_sha(file.sha256, file.sent),
                "seconds": f"{file.seconds:.2f}",
                "MB/s": f"{file.throughput_mbps:.1f}",
                "status": status,
                "upstream says": " ".join(answer_summary(result, index).split()),
            }
            rows.append((result, file, cells))
    return rows


def render_summary(console: Console, results: Sequence[UploadResult]) -> None:
    """A table when the terminal is wide enough, else one plain line per file (nothing wraps mid-name)."""
    rows = _rows(results)
    columns = ["file", "size", "sha256", "seconds", "MB/s", "status", "upstream says"]
    if any(file.partial and file.size for _, file, _ in rows):
        columns.insert(2, "sent")  # only worth a column when some file did not go whole
    fixed = [c for c in columns if c not in ("file", "upstream says")]
    widths = {c: max(len(c), *(len(cells[c]) for _, _, cells in rows)) for c in fixed} if rows else {}
    free = console.width - sum(widths.values()) - 2 * (len(columns) - 1)
    if not console.is_terminal or console.width < MIN_TABLE_WIDTH or free < MIN_FREE_WIDTH:
        _plain(console, rows, "sent" in columns)
    else:
        _table(console, rows, columns, free)


def _plain(console: Console, rows: list[tuple[UploadResult, FileResult, dict[str, str]]], with_sent: bool) -> None:
    for *_, cells in rows:
        sent = f"  sent {cells['sent']}" if with_sent else ""
        line = (
            f"{cells['file']}  {cells['size']} bytes{sent}  sha256 {cells['sha256']}  {cells['seconds']} s  "
            f"{cells['MB/s']} MB/s  {cells['status']}  {cells['upstream says']}"
        )
        console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)


def _table(
    console: Console, rows: list[tuple[UploadResult, FileResult, dict[str, str]]], columns: list[str], free: int
) -> None:
    longest = max(len(cells["file"]) for _, _, cells in rows)
    file_width = min(longest, max(free * 3 // 5, free - max(len(c["upstream says"]) for _, _, c in rows)))
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in columns:
        free_text = name in ("file", "upstream says")
        table.add_column(name, justify="left" if free_text or name == "sha256" else "right", no_wrap=True,
                         overflow="ellipsis", max_width=file_width if name == "file" else None)  # fmt: skip
    for result, _, cells in rows:
        style = "green" if result.ok else "red"
        values = dict(cells, file=shorten_middle(cells["file"], file_width))
        values["status"] = f"[{style}]{cells['status']}[/]"
        table.add_row(*(values[c] if c == "status" else escape(values[c]) for c in columns))
    console.print(table)

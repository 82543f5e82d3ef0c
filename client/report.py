"""UploadResult -> the contract's --json object, or a short table for humans."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from client.upload import UploadResult

__all__ = ["answer_summary", "render_table", "result_json", "result_line", "short_sha"]


def result_json(result: UploadResult) -> dict[str, Any]:
    """The contract's object, keys in contract order."""
    return {
        "status": result.status,
        "upload_id": result.upload_id,
        "bytes_sent": result.bytes_sent,
        "seconds": round(result.seconds, 6),
        "throughput_mbps": round(result.throughput_mbps, 3),
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in result.files],
        "sha256": {f.path: f.sha256 for f in result.files},
        "response": result.response,
    }


def result_line(result: UploadResult) -> str:
    return json.dumps(result_json(result), ensure_ascii=False)


def answer_summary(result: UploadResult, index: int) -> str:
    """What the upstream said about file `index`, in a few words."""
    response = result.response
    if isinstance(response, dict):
        error = response.get("error")
        if isinstance(error, dict):
            return f"{error.get('code', 'error')}: {error.get('message', '')}"
        files = response.get("files")
        if isinstance(files, list) and index < len(files) and isinstance(files[index], dict):
            return _describe_stored(files[index], result.files[index].sha256)
        text = json.dumps(response, ensure_ascii=False)
    else:
        text = str(response)
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:59] + "…"


def _describe_stored(entry: dict[str, Any], sha256: str) -> str:
    # Where upstream stored it is in --json; a long path would crowd the table.
    words = []
    if entry.get("sha256") is not None:
        words.append("sha256 matches" if entry["sha256"] == sha256 else "sha256 DIFFERS")
    return words[0] if words else "received"


def short_sha(hexdigest: str) -> str:
    # The table is for eyes; the full digest is in --json. 12 hex digits still tell files apart.
    return hexdigest[:12] + "…"


def render_table(console: Console, results: Sequence[UploadResult]) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    # Numbers never wrap; the two free-text columns share what width is left.
    table.add_column("file", overflow="fold", ratio=1)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("sha256", no_wrap=True)
    table.add_column("seconds", justify="right", no_wrap=True)
    table.add_column("MB/s", justify="right", no_wrap=True)
    table.add_column("status", justify="right", no_wrap=True)
    table.add_column("upstream says", overflow="fold", ratio=1)
    for result in results:
        style = "green" if result.ok else "red"
        for index, file in enumerate(result.files):
            table.add_row(
                escape(file.path),
                f"{file.size:,}",
                short_sha(file.sha256),
                f"{result.seconds:.2f}",
                f"{result.throughput_mbps:.1f}",
                f"[{style}]{result.status}[/]",
                escape(answer_summary(result, index)),
            )
    console.print(table)

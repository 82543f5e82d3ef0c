"""relay/core stays sans-IO: none of its modules imports a networking, async or server library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "relay" / "core"
FORBIDDEN = {
    "asyncio",
    "starlette",
    "httpx",
    "anyio",
    "aiofiles",
    "uvicorn",
    "socket",
    "fastapi",
    "httpcore",
    "h11",
    "httptools",
}
MODULES = sorted(CORE.glob("*.py"))


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_modules_found() -> None:
    assert {p.name for p in MODULES} >= {"events.py", "limits.py", "inspector.py", "multipart.py", "progress.py"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_io_imports(path: Path) -> None:
    assert not imported(path) & FORBIDDEN


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_open_calls(path: Path) -> None:
    calls = [
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open"
    ]
    assert not calls

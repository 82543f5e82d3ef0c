"""A relay without `--redis` or webhooks never loads redis-py or the webhook deliverer (and httpx with it): each
costs resident memory (about 6 and 4 MiB) that a plain relay has no use for (issue 15's RSS target)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CODE = """
import sys
import relay.cli
from relay.app import create_app
from relay.settings import Settings
create_app(Settings(spool=sys.argv[1], store=sys.argv[2]))
print(" ".join(sorted({name.split(".")[0] for name in sys.modules} & {"redis", "httpx"})))
print("relay.webhooks.deliverer" in sys.modules, "relay.resumable.shared" in sys.modules)
"""


def test_a_plain_relay_loads_neither_redis_nor_the_webhook_deliverer(tmp_path: Path) -> None:
    args = [sys.executable, "-c", CODE, str(tmp_path / "spool"), str(tmp_path / "received")]
    lines = subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines == ["", "False False"]

"""The README's main command, small: daemon (own redis-server), pump, producers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_delivers_every_record(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "collector.demo", "--producers", "2", "--records", "3000",
         "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=240,
    )
    print(proc.stdout[-2000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sent 6,000  dropped by policy 0  delivered 6,000  lost 0  duplicated 0" in proc.stdout

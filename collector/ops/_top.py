"""``collector top``: the status picture, live (rich ``Live``), rates between refreshes.

Every ``--refresh`` seconds it gathers the status document again
(:func:`collector.ops._status.gather`) and computes records/s written by the
daemon and delivered per sink from the counters of the previous refresh;
sinks are sorted worst first (not ready, oldest unacknowledged entry, lag,
dead letters), rings fullest first. ``q`` (or Ctrl-C) quits. Keys are read
from the terminal in cbreak mode; without a terminal on stdin it runs until
interrupted.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from collector.config import CollectorConfig
from pump.config import PumpConfig

from ._render import render_status
from ._status import gather

__all__ = ["run_top"]


@contextlib.contextmanager
def _cbreak() -> Iterator[bool]:
    """The terminal on stdin in cbreak mode (keys without Enter); False without one."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):
        yield False
        return
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def _key(timeout_s: float, keys: bool) -> str | None:
    """A key pressed within ``timeout_s`` (the wait between refreshes), else None."""
    if not keys:
        time.sleep(timeout_s)  # no terminal: just the refresh interval
        return None
    ready, _, _ = select.select([sys.stdin], [], [], timeout_s)
    return os.read(sys.stdin.fileno(), 1).decode(errors="replace") if ready else None


def _with_rates(doc: dict[str, Any], prev: dict[str, Any] | None) -> None:
    if prev is None:
        return
    dt = max(doc["time"] - prev["time"], 1e-3)
    d, p = doc["daemon"], prev["daemon"]
    if d["reachable"] and p["reachable"]:
        d["rates"] = {"records_per_s": round((d["records_written"] - p["records_written"]) / dt,
                                             1),
                      "batches_per_s": round((d["batches_written"] - p["batches_written"]) / dt,
                                             2),
                      "interval_s": round(dt, 3)}
    for sink, s in doc["pump"]["sinks"].items():
        before = prev["pump"]["sinks"].get(sink)
        if before is not None and doc["pump"]["reachable"] and prev["pump"]["reachable"]:
            s["delivered_per_s"] = round((s["delivered"] - before["delivered"]) / dt, 1)


def _screen(doc: dict[str, Any], refresh_s: float, n: int) -> Group:
    head = Text(f"collector top: refresh {refresh_s:g}s (#{n}), "
                f"{time.strftime('%H:%M:%S', time.localtime(doc['time']))}; q quits",
                style="dim")
    return Group(head, render_status(doc))


def run_top(daemon_cfg: CollectorConfig, pump_cfg: PumpConfig, *, refresh_s: float,
            timeout_s: float, iterations: int = 0) -> int:
    """Run until ``q`` (or ``iterations`` refreshes, when > 0); returns the exit status."""
    console = Console()
    prev: dict[str, Any] | None = None
    n = 0
    with _cbreak() as keys, Live(console=console, auto_refresh=False, screen=False,
                                 transient=False) as live:
        while True:
            doc = gather(daemon_cfg, pump_cfg, timeout_s=timeout_s)
            _with_rates(doc, prev)
            prev = doc
            n += 1
            live.update(_screen(doc, refresh_s, n), refresh=True)
            if iterations and n >= iterations:
                return 0
            deadline = time.monotonic() + refresh_s
            while (left := deadline - time.monotonic()) > 0:
                key = _key(left, keys)
                if key in ("q", "Q"):
                    return 0

"""``collector top`` as a person runs it: in a terminal (tmux), against the running demo.

The demo (``python -m collector.demo``, paced so it runs for a while) is
started with a ``--workdir`` so its ``collector.yaml`` and ``pump.yaml`` are
known; ``collector top`` runs in a detached tmux session of a private tmux
server (``-L``); the test reads the screen with ``capture-pane``, checks
what it shows after a few refreshes (rates between refreshes, the demo's
sink, its ring and flushers), presses ``q`` and sees the program end.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.testing import console_script, kill_tree, wait_until

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Path]:
    work = tmp_path / "demo"
    out = open(tmp_path / "demo.out", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "collector.demo", "--producers", "2",
                             "--records", "100000", "--rate", "1000", "--workdir", str(work)],
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: b"collector-pump healthy" in (tmp_path / "demo.out").read_bytes()
                   or proc.poll() is not None, 90, "the demo to start its daemon and pump")
        assert proc.poll() is None, (tmp_path / "demo.out").read_text()
        yield work
    finally:
        kill_tree(proc.pid)
        proc.wait(30)
        out.close()


def test_top_renders_in_tmux_and_q_quits(demo: Path, tmp_path: Path) -> None:
    server = f"collector-top-{os.getpid()}"
    tmux = ["tmux", "-L", server, "-f", "/dev/null"]
    cmd = [*console_script("collector"), "top", "--daemon", str(demo / "collector.yaml"),
           "--pump", str(demo / "pump.yaml"), "--refresh", "0.5"]
    # the pane's size is the terminal's: no COLUMNS/LINES of pytest's own terminal in it
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    subprocess.run([*tmux, "new-session", "-d", "-s", "top", "-x", "200", "-y", "60",
                    " ".join(cmd)], check=True, timeout=30, env=env)
    try:
        def screen() -> str:
            return subprocess.run([*tmux, "capture-pane", "-p", "-t", "top"],
                                  capture_output=True, text=True, timeout=10).stdout

        def refreshed() -> str | None:  # the third refresh or later, records flowing
            s = screen()
            rate = re.search(r"written [\d,]+ records in [\d,]+ batches \(([\d,.]+) rec/s", s)
            if re.search(r"\(#([3-9]|\d\d+)\)", s) and rate and float(
                    rate.group(1).replace(",", "")) > 0:
                return s
            return None

        text = wait_until(refreshed, 60, "collector top refreshed with rates between refreshes")
        print(text)
        assert "collector top: refresh 0.5s" in text and "q quits" in text
        assert "collector status: ready (exit 0)" in text
        assert re.search(r"file \(file\)[\s│]+yes", text), text
        assert "flusher 0" in text and "rings in" in text
        subprocess.run([*tmux, "send-keys", "-t", "top", "q"], check=True, timeout=10)
        wait_until(lambda: subprocess.run([*tmux, "has-session", "-t", "top"],
                                          capture_output=True).returncode != 0, 15,
                   "collector top to quit on q")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=10)

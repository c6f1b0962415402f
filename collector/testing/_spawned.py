"""``SpawnedPeer``: what the launchers of a server program the tests spawn share
(``influxd``, tansu, ``redis-server``): its process, its log, waiting until it is up,
``pause()``/``resume()`` and ``stop()``."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from ._wait import free_port, wait_until

__all__ = ["SpawnedPeer"]


class SpawnedPeer:
    """A server program on a free loopback port (``port``), its files in ``workdir``.

    ``pause()`` is SIGSTOP (its connections stay open and nothing answers),
    ``resume()`` SIGCONT; ``stop()`` resumes it, sends ``stop_signal`` and kills it
    if it has not exited after ``stop_grace_s``.
    """

    program: ClassVar[str]  # its name in messages
    log_name: ClassVar[str]  # its log file in workdir
    stop_signal: ClassVar[int] = signal.SIGTERM
    stop_grace_s: ClassVar[float] = 20.0

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / self.log_name

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def spawn(self, argv: list[str], up: Callable[[], bool], timeout: float, *,
              to_log: bool = True, new_session: bool = True, interval: float = 0.1) -> None:
        """Run ``argv`` (its output appended to :attr:`log`, unless it writes the log
        itself) and wait until ``up()``; fail at once, with the log's end, if it exits."""
        if to_log:
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=new_session)
        else:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL,
                                         start_new_session=new_session)

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (
                f"{self.program} exited with {self.proc and self.proc.returncode}; "
                f"{self.log} ends with:\n{self.log_tail()}")
            return up()

        wait_until(ready, timeout, f"{self.program} on port {self.port}", interval=interval)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers."""
        assert self.proc is not None, f"{self.program} was not started"
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None, f"{self.program} was not started"
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Resumed, then ``stop_signal``; SIGKILL if it takes more than ``stop_grace_s``."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(self.stop_signal)
        try:
            proc.wait(self.stop_grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

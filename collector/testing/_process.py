"""Processes started by the kit: environment, executables, HTTP probes, killing a tree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from contextlib import suppress
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Self

import psutil
import yaml

from ._wait import wait_until

__all__ = ["Service", "clean_environ", "console_script", "http_get", "kill_tree",
           "write_config"]


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    """Write ``config`` as YAML to ``path`` (mode 0600, parents created); return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    os.chmod(path, 0o600)
    return path


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``COLLECTOR_*`` variables, plus ``extra``.

    A service under test is configured by its file and by what the caller
    passes here, never by a variable that happens to be set in the shell.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env.update(extra or {})
    return env


def console_script(name: str) -> list[str]:
    """The command that runs console script ``name`` of this Python's installation.

    The script next to ``sys.executable`` (a virtualenv's ``bin/``), else this
    interpreter running the script's entry point (never a script of the same
    name on ``PATH``, which may belong to another installation).
    """
    sibling = Path(sys.executable).with_name(name)
    if sibling.exists():
        return [str(sibling)]
    for ep in entry_points(group="console_scripts", name=name):
        module, _, attr = ep.value.partition(":")
        return [sys.executable, "-c", f"import sys; from {module} import {attr} as main; "
                f"sys.argv[0] = {name!r}; sys.exit(main())"]
    raise RuntimeError(f"{name} is not installed for {sys.executable}: install the "
                       "collector package (pip install collector)")


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    """GET ``url``: (status, body) for any HTTP answer, (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant (SIGCONT first, in case they are stopped)."""
    try:
        parent = psutil.Process(pid)
        procs = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGCONT)
            p.kill()
    psutil.wait_procs(procs, timeout=10)


class Service:
    """A program under test: its own session, output in ``log``, HTTP on ``address``.

    ``start()`` runs ``argv`` and waits (unless told not to) until
    ``GET up_path`` answers 200; it fails at once, with the end of the log,
    if the program exits meanwhile. ``stop()`` is SIGTERM and a bounded wait
    (then ``kill -9`` of the whole tree), ``kill_all()`` a ``kill -9`` of the
    program and every process it started, ``close()`` makes sure nothing is
    left (test teardown). ``starts`` counts the starts.
    """

    up_path: ClassVar[str] = "/healthz"
    reap_on_stop: ClassVar[bool] = False  # kill what is left of the session after a stop

    def __init__(self, argv: list[str], *, log: Path, address: str,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.log = log
        self.address = address
        self.env = dict(env or {})
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def name(self) -> str:
        return Path(self.argv[0]).name

    @property
    def pid(self) -> int | None:
        """The pid while it runs, else None."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def alive(self) -> bool:
        return self.pid is not None

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> Self:
        """Start the program; with ``wait``, return once :attr:`up_path` answers 200."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         env=clean_environ(self.env), cwd=self.cwd,
                                         start_new_session=True)
        self.starts += 1
        if wait:
            self.wait_up(timeout)
        return self

    def up(self) -> bool:
        """Running (else ``AssertionError`` with its log) and ``GET up_path`` answers 200."""
        self.check_running()
        return self.get(self.up_path)[0] == 200

    def wait_up(self, timeout: float = 60.0) -> None:
        wait_until(self.up, timeout, f"{self.name} to answer {self.up_path} (log {self.log})",
                   interval=0.05)

    # -- HTTP ------------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"http://{self.address}/{path.lstrip('/')}"

    def get(self, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
        """``GET path``: (status, body), (0, b"") when nothing answers."""
        return http_get(self.url(path), timeout)

    def healthy(self) -> bool:
        return self.get("/healthz")[0] == 200

    def ready(self) -> bool:
        self.check_running()
        return self.get("/readyz")[0] == 200

    def get_json(self, path: str, timeout: float = 3.0) -> tuple[int, Any]:
        """(status, decoded JSON body) of ``GET path``; (0, None) when nothing answers."""
        code, body = self.get(path, timeout)
        return (code, json.loads(body)) if code else (0, None)

    def readyz(self) -> tuple[int, Any]:
        """(status, decoded JSON) of ``/readyz``; ``ConnectionError`` when nothing answers."""
        code, detail = self.get_json("/readyz")
        if code == 0:
            raise ConnectionError(f"{self.name} does not answer on {self.address}")
        return code, detail

    def metrics_text(self) -> str:
        """``/metrics`` as text; ``ConnectionError`` unless it answers 200."""
        code, body = self.get("/metrics")
        if code != 200:
            raise ConnectionError(f"{self.name} /metrics answered {code}")
        return body.decode()

    def metrics(self) -> dict[str, float]:
        """Samples of ``/metrics`` as ``{"name{labels}": value}``."""
        out = {}
        for line in self.metrics_text().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    # -- the process -------------------------------------------------------------
    def check_running(self) -> None:
        """``AssertionError`` with the end of the log unless the program runs."""
        assert self.proc is not None, f"{self.name} was not started"
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}; "
                                 f"{self.log} ends with:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def children(self) -> list[psutil.Process]:
        """Its live (not zombie) child processes."""
        if self.pid is None:
            return []
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        out = []
        for k in kids:
            with suppress(psutil.NoSuchProcess):
                if k.status() != psutil.STATUS_ZOMBIE:
                    out.append(k)
        return out

    def signal(self, sig: int) -> None:
        assert self.proc is not None, f"{self.name} was not started"
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the program to exit; its exit status."""
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait up to ``timeout`` (then ``kill -9`` of the tree); the status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)  # a stopped process ignores SIGTERM
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_all()
        if self.reap_on_stop:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode

    def kill_all(self) -> None:
        """``kill -9`` of the program and of every process it started (a crash of it all)."""
        if self.proc is None:
            return
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            kids = []
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for k in kids:  # also any child that left the process group
            with suppress(psutil.NoSuchProcess):
                k.kill()
        self.proc.kill()
        self.proc.wait(10)
        psutil.wait_procs(kids, timeout=10)

    def close(self) -> None:
        """Make sure nothing of it is left running (teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill_all()
        elif self.proc is not None and self.reap_on_stop:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

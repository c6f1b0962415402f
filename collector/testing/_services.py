"""``collector-daemon``, ``collector-pump`` and ``gunicorn`` as processes under test."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import psutil
import yaml

from ._process import Service, console_script, write_config
from ._wait import free_port, wait_until

__all__ = ["QUICK_DAEMON", "QUICK_PUMP", "Daemon", "Gunicorn", "Pump"]

# Short intervals and backoffs, so that a test waits milliseconds, not seconds.
QUICK_DAEMON: dict[str, Any] = {
    "pool_size": 2,
    "batch_size": 1000,
    "flush_interval_ms": 20,
    "max_flush_interval_ms": 100,
    "scan_interval_ms": 50,
    "retry_initial_ms": 20,
    "retry_max_ms": 300,
    "shutdown_timeout_s": 20,
    "startup_redis_wait_s": 5,
    "log_level": "info",
}
QUICK_PUMP: dict[str, Any] = {
    "read_block_s": 0.1,
    "retry_initial_ms": 20,
    "retry_max_ms": 200,
    "batch_deadline_s": 20,
    "claim_idle_ms": 30_000,
    "shutdown_timeout_s": 10,
    "trim_interval_s": 0.5,
}


class _ConfiguredService(Service):
    """A collector console script run as ``SCRIPT --config FILE [ARGS]``.

    ``address`` is the ``health_address`` of the file unless given (when
    ``args`` override it).
    """

    script: ClassVar[str]

    def __init__(self, config: Path, *, log: Path | None = None, args: list[str] | None = None,
                 env: Mapping[str, str] | None = None, address: str | None = None) -> None:
        self.config = config
        if address is None:
            data = yaml.safe_load(config.read_text()) or {}
            if "health_address" not in data:
                raise ValueError(f"{config} has no 'health_address': pass address= to say "
                                 "where it listens")
            address = str(data["health_address"])
        super().__init__([*console_script(self.script), "--config", str(config), *(args or [])],
                         log=log or config.with_suffix(".log"), env=env, address=address)

    @classmethod
    def _written(cls, path: Path, config: Mapping[str, Any], log: Path,
                 env: Mapping[str, str] | None) -> Self:
        """``config`` with a free loopback ``health_address`` first, written to ``path``."""
        write_config(path, {"health_address": f"127.0.0.1:{free_port()}", **config})
        return cls(path, log=log, env=env)


class Daemon(_ConfiguredService):
    """``collector-daemon --config FILE [ARGS]``; started once ``/readyz`` answers 200.

    :meth:`write` makes the config file (and the object) for a working
    directory; ``Daemon(path)`` runs an existing one.
    """

    script = "collector-daemon"
    up_path = "/readyz"

    @classmethod
    def write(cls, workdir: Path, redis_url: str | None, *, base: Mapping[str, Any] = QUICK_DAEMON,
              log: Path | None = None, env: Mapping[str, str] | None = None,
              **keys: Any) -> Daemon:
        """Write ``workdir/collector.yaml`` and return its daemon (not started).

        The file has ``redis_url`` (None: the daemon's embedded redis-server),
        ``rings_dir`` ``workdir/rings`` and ``runtime_dir`` ``workdir/run``,
        a free loopback ``health_address``, then ``base`` (:data:`QUICK_DAEMON`)
        and ``keys``. The same file configures ``collector.Analytics.from_config``.
        """
        config = {"redis_url": redis_url, "rings_dir": str(workdir / "rings"),
                  "runtime_dir": str(workdir / "run"), **base, **keys}
        return cls._written(workdir / "collector.yaml", config, log or workdir / "daemon.log",
                            env)

    def flusher_pids(self) -> list[int]:
        """The pids of the live flushers, as ``/readyz`` lists them."""
        return [f["pid"] for f in self.readyz()[1]["flushers"] if f["alive"]]


class Pump(_ConfiguredService):
    """``collector-pump --config FILE [ARGS]``; started once ``/healthz`` answers 200.

    (``/readyz`` also needs every sink healthy, which a test may prevent on
    purpose.) Workers left behind by a stopped supervisor are killed by
    ``stop()`` and ``close()``.
    """

    script = "collector-pump"
    up_path = "/healthz"
    reap_on_stop = True

    @classmethod
    def write(cls, workdir: Path, redis_url: str, pumps: Mapping[str, Any], *,
              base: Mapping[str, Any] = QUICK_PUMP, name: str = "pump.yaml",
              log: Path | None = None, env: Mapping[str, str] | None = None,
              **keys: Any) -> Pump:
        """Write ``workdir/NAME`` and return its pump (not started).

        The file has ``redis_url``, a free loopback ``health_address``, then
        ``base`` (:data:`QUICK_PUMP`), ``keys`` and ``pumps`` (the sinks).
        """
        config = {"redis_url": redis_url, "spool_dir": str(workdir / "spool"), **base, **keys,
                  "pumps": dict(pumps)}
        return cls._written(workdir / name, config, log or workdir / "pump.log", env)

    def workers(self, sink: str) -> list[psutil.Process]:
        """The sink's worker processes: children of the pump that ``/readyz`` names for it."""
        pids = set(self.readyz()[1]["sinks"][sink]["pids"])
        return [c for c in self.children() if c.pid in pids]



def _no_control_socket() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(x) for x in version("gunicorn").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return []
    return ["--no-control-socket"] if (major, minor) >= (25, 1) else []


_NO_CONTROL_SOCKET = _no_control_socket()


class Gunicorn(Service):
    """``python -m gunicorn`` serving ``app`` on a free loopback port.

    Started once ``GET /healthz`` answers 200 and ``workers`` workers run.
    ``config`` is a ``gunicorn.conf.py`` (``-c``); ``args`` go before the app.
    gunicorn 25.1 and newer open a control socket at one path per user, which
    two servers at once would share: the kit turns it off.
    """

    def __init__(self, app: str, *, log: Path, workers: int = 2, config: Path | None = None,
                 args: list[str] | None = None, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.port = free_port()
        self.workers = workers
        argv = [sys.executable, "-m", "gunicorn", *(["-c", str(config)] if config else []),
                "-b", f"127.0.0.1:{self.port}", "--workers", str(workers),
                *_NO_CONTROL_SOCKET, *(args or []), app]
        super().__init__(argv, log=log, address=f"127.0.0.1:{self.port}", env=env, cwd=cwd)

    @property
    def name(self) -> str:
        return "gunicorn"

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> Self:
        super().start(wait=wait, timeout=timeout)
        if wait:
            wait_until(lambda: len(self.worker_pids()) == self.workers, timeout,
                       f"{self.workers} gunicorn workers")
        return self

    def worker_pids(self) -> set[int]:
        return {c.pid for c in self.children()}

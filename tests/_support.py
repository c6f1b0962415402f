"""Helpers shared by the tests: real servers on free ports, waiting on conditions."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis

from bench._harness import free_port, wait_for

__all__ = ["RedisServer", "free_port", "in_threads", "pg_dsn", "wait_until"]

T = TypeVar("T")


def wait_until(cond: Callable[[], T], timeout: float = 30.0, what: str = "condition",
               interval: float = 0.02) -> T:
    """Poll ``cond`` until it returns a truthy value; fail after ``timeout`` seconds.

    ``bench._harness.wait_for``, with a timeout reported as a test failure
    (``AssertionError``) rather than an error.
    """
    try:
        return wait_for(cond, timeout, what, interval)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


def in_threads(target: Callable[[int], object], threads: int, timeout: float = 120.0) -> None:
    """Run ``target(k)`` for k in 0..threads-1 in threads; re-raise the first failure."""
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            target(k)
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout)
    if errors:
        raise errors[0]


class RedisServer:
    """A real ``redis-server`` on a free loopback port, private to one test."""

    def __init__(self, workdir: Path, *, appendonly: bool = True, port: int | None = None,
                 extra: list[str] | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH: run `sh .ci/setup` first")
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.workdir), "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--logfile", str(self.workdir / "redis.log"),
            *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, 15, f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        try:
            return bool(self.client(socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def client(self, **kw: object) -> redis.Redis:
        return redis.Redis.from_url(self.url, **kw)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL the server (what was not yet in the append-only file is lost)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """Graceful shutdown: the append-only file is flushed."""
        if self.proc and self.proc.poll() is None:
            try:
                self.client(socket_timeout=2).shutdown(nosave=not self.appendonly)
            except redis.RedisError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def pg_dsn() -> str:
    """The PostgreSQL the tests use: $COLLECTOR_TEST_PG_DSN or the local socket."""
    return os.environ.get("COLLECTOR_TEST_PG_DSN", "dbname=collector_test")

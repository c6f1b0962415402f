"""The daemon's private ``redis-server`` (used when ``redis_url`` is not set).

It listens only on a unix socket ``<runtime_dir>/redis.sock`` (mode 0700,
``port 0``: no TCP), keeps an append-only file (``appendfsync everysec``,
files 0600) in ``runtime_dir`` and is restarted by the supervisor if it
dies. ``runtime_dir`` is created 0700 when missing and must otherwise be
owned by this user and not writable by group or others; it is never
chmod-ed, and an existing socket in it must be this user's
(:mod:`collector.common.private`), checked before every connection. On
Linux it also gets ``SIGTERM`` if the supervisor dies (parent-death
signal), so a ``kill -9`` of the daemon does not leave it running; a server
left over from an earlier run on the same socket is shut down (with its
append-only file flushed) before a new one starts.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from collector.common.log import get_logger
from collector.common.private import NotPrivate, private_directory, private_socket
from collector.common.stream import SOCKET_NAME

from ._startup import LOCK_NAME, try_lock

log = get_logger(__name__)


_PR_SET_PDEATHSIG = 1
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes


class EmbeddedRedisError(RuntimeError):
    """The private redis-server cannot be started."""


def _child_setup() -> None:  # runs in the child between fork and exec
    os.umask(0o077)  # its append-only file and logs are this user's alone
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:  # pragma: no cover - best effort, Linux only
        pass


class EmbeddedRedis:
    def __init__(self, binary: str, runtime_dir: str | os.PathLike[str],
                 maxmemory: int = 0) -> None:
        path = shutil.which(binary)
        if path is None:
            raise EmbeddedRedisError(
                f"redis_server={binary!r} is not on PATH: install redis-server "
                "(`sh .ci/setup` does) or set redis_url to an existing Redis"
            )
        self.binary = path
        self.dir = Path(runtime_dir)
        self.socket = self.dir / SOCKET_NAME
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            raise EmbeddedRedisError(
                f"runtime_dir={str(self.dir)!r} is too long: the socket path {self.socket} "
                f"must be at most {MAX_SOCKET_PATH} bytes"
            )
        self.maxmemory = maxmemory  # bytes; 0: no limit
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._lock_fd = -1

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _client(self, timeout: float = 1.0) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=timeout,
                           socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))

    def _verify(self) -> None:
        """The directory and the socket are this user's (before any connection)."""
        try:
            private_directory(self.dir, "runtime_dir")
            private_socket(self.socket, "runtime_dir")
        except NotPrivate as exc:
            raise EmbeddedRedisError(str(exc)) from None

    def _prepare_dir(self) -> None:
        self._verify()
        if self._lock_fd < 0:
            # One daemon per runtime_dir: a second one would shut our server down
            # as a "left-over" and share its append-only file.
            fd = try_lock(self.dir / LOCK_NAME)
            if fd is None:
                raise EmbeddedRedisError(
                    f"runtime_dir {self.dir} is used by another collector-daemon's embedded "
                    f"redis-server (it holds {LOCK_NAME} there); give each daemon "
                    "its own runtime_dir"
                )
            self._lock_fd = fd

    def _shutdown_leftover(self) -> None:
        if not self.socket.exists():
            return
        try:
            self._client().ping()
        except redis.RedisError:
            return  # nothing listens: a stale socket file (redis-server replaces it)
        try:
            self._client().shutdown(nosave=False)
            log.warning("Shut down a redis-server left over from an earlier run.",
                        socket=str(self.socket))
        except redis.ConnectionError:
            pass  # nothing listens (a stale socket file) or it just exited
        except redis.RedisError as exc:
            raise EmbeddedRedisError(
                f"a server answers on {self.socket} and refused SHUTDOWN: {exc}"
            ) from None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self._client(0.2).ping()
            except redis.RedisError:
                return
            time.sleep(0.05)

    def start(self, wait_s: float = 15.0) -> None:
        """Start redis-server and wait until it answers PING."""
        self._prepare_dir()
        self._shutdown_leftover()
        self._verify()  # what a left-over left behind
        args = [
            self.binary,
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxmemory", str(self.maxmemory),
            "--maxmemory-policy", "noeviction",  # a full Redis refuses writes, never evicts
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
            "--pidfile", str(self.dir / "redis.pid"),
        ]
        kwargs = {"preexec_fn": _child_setup} if sys.platform.startswith("linux") else {}
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
        deadline = time.monotonic() + max(wait_s, 1.0)
        while True:
            if self.proc.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with code {self.proc.returncode} at start; "
                    f"see {self.dir / 'redis.log'}"
                )
            try:
                if self._client(0.5).ping():
                    break
            except redis.BusyLoadingError:
                pass  # loading the append-only file
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedRedisError(
                    f"redis-server did not answer on {self.socket} within {wait_s}s"
                )
            time.sleep(0.02)
        log.info("Started the embedded redis-server.", pid=self.proc.pid, url=self.url,
                 dir=str(self.dir))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart_if_dead(self) -> bool:
        """Restart a dead server; True if it had died."""
        if self.proc is None or self.alive():
            return False
        code = self.proc.returncode
        self.restarts += 1
        log.error("The embedded redis-server died; restarting it.", code=code,
                  restarts=self.restarts)
        try:
            self.start()
        except EmbeddedRedisError as exc:
            log.error("Cannot restart the embedded redis-server.", error=str(exc))
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server; SIGTERM makes it flush its append-only file first."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.info("Stopped the embedded redis-server.", code=proc.returncode)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

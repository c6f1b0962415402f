"""What the daemon needs before it serves a ring: its rings directory, and Redis.

:func:`lock_rings_dir` creates the rings directory 0700 if missing, refuses one
that another user could write to (:mod:`collector.common.private`), and holds
``.collector-daemon.lock`` in it for the daemon's life, so a second daemon
on the same directory exits with the reason instead of racing the first.
Waiting for Redis (``startup_redis_wait_s``) is
:func:`collector.common.redisconn.wait_for_redis`, shared with the pump.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from collector.common.log import get_logger
from collector.common.private import NotPrivate, private_directory

_log = get_logger(__name__)

LOCK_NAME = ".collector-daemon.lock"


class DaemonError(RuntimeError):
    """The daemon cannot start; the message says why and what to change."""


def try_lock(path: Path) -> int | None:
    """Hold an exclusive ``flock`` on ``path`` (created 0600): its fd, or None if held elsewhere."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def lock_rings_dir(rings_dir: Path) -> int:
    """Create ``rings_dir`` private if missing and lock it; return the lock file's fd."""
    try:
        private_directory(rings_dir, "rings_dir")
    except NotPrivate as exc:
        raise DaemonError(str(exc)) from None
    path = rings_dir / LOCK_NAME
    fd = try_lock(path)
    if fd is None:
        raise DaemonError(
            f"rings_dir {rings_dir} is served by another collector-daemon "
            f"(it holds {path}); one daemon per rings directory"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd

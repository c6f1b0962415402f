"""What the daemon needs before it serves a ring: its rings directory, and Redis.

:func:`lock_rings_dir` makes the rings directory private (0700) and holds
``.collector-daemon.lock`` in it for the daemon's life, so a second daemon
on the same directory exits with the reason instead of racing the first.
:func:`wait_for_redis` waits up to ``startup_redis_wait_s`` for Redis.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

import redis

import ringbuf
from collector.common.log import get_logger
from collector.config import CollectorConfig

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
        ringbuf.ensure_private_directory(rings_dir)
    except ringbuf.RingPermissionError as exc:
        raise DaemonError(f"rings_dir: {exc}") from None
    except OSError as exc:
        raise DaemonError(f"rings_dir={str(rings_dir)!r}: cannot create it: "
                          f"{exc.strerror}") from None
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


def wait_for_redis(client: redis.Redis, cfg: CollectorConfig,
                   stopping: Callable[[], bool]) -> bool:
    """True once Redis answers a PING; False on refused credentials, timeout or a stop."""
    url = cfg.redacted_redis_url()
    deadline = time.monotonic() + cfg.startup_redis_wait_s
    delay = 0.05
    last: BaseException | None = None
    logged = False
    while not stopping():
        try:
            client.ping()
            _log.info("Redis is reachable.", url=url)
            return True
        except (redis.exceptions.AuthenticationError,
                redis.exceptions.NoPermissionError) as exc:
            _log.error("Redis refused the credentials; check redis_username and "
                       "redis_password (or COLLECTOR_REDIS_PASSWORD).", url=url,
                       error=str(exc))
            return False
        except (redis.RedisError, OSError) as exc:
            last = exc
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if not logged:
            logged = True
            _log.warning("Redis is not reachable yet; waiting.", url=url,
                         startup_redis_wait_s=cfg.startup_redis_wait_s, error=str(last))
        time.sleep(min(delay, left))
        delay = min(delay * 2, 1.0)
    if stopping():
        return False
    _log.error(f"Redis at {url} is unreachable after startup_redis_wait_s="
               f"{cfg.startup_redis_wait_s}s; exiting.", url=url, error=str(last))
    return False

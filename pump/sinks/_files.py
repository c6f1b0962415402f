"""Helpers of the ``file`` sink (``pump/sinks/file.py``): torn-line repair, the
health probe, errors and directory fsync."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from collector.common.log import get_logger

from ._base import OutageError, RetryableError

log = get_logger("pump.sinks.file")  # the file sink's lines keep its logger name

_PROBE_BYTES = 4096  # one page: a file system without room for it takes no record


def repair_tail(fd: int, path: Path | None) -> int:
    """Cut a partial last line left by a writer killed mid-write; the new size.

    The caller holds an exclusive ``flock`` on ``fd``.
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    keep = 0
    end = size
    while end > 0:
        start = max(0, end - 65536)
        i = os.pread(fd, end - start, start).rfind(b"\n")
        if i >= 0:
            keep = start + i + 1
            break
        end = start
    os.ftruncate(fd, keep)
    log.warning("Cut a partial last line left by a writer that died mid-write.",
                path=path, bytes=size - keep)
    return keep


def write_error(what: str, exc: OSError) -> RetryableError:
    """A full file system or quota is an outage (every record would hit it)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutageError(f"{what}: {exc}")
    return RetryableError(f"{what}: {exc}")


def utc_hour() -> int:
    return int(time.time() // 3600)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_abandoned(directory: Path, prefix: str) -> None:
    """Cut torn last lines of rotated files that no live writer holds."""
    if not directory.is_dir():
        return
    for path in sorted(directory.glob(f"{prefix}-*")):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live writer holds it
        try:
            repair_tail(fd, path)
        finally:
            os.close(fd)


def write_probe(directory: Path) -> None:
    """Write and fsync a probe file in ``directory``, then remove it; the write's error."""
    probe = directory / f".collector-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"\0" * _PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise write_error(f"file sink cannot write in {str(directory)!r}", exc) from exc

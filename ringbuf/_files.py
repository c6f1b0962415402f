"""Ring files on disk: the private directory, creating and opening a ring file, liveness.

A rings directory is private to its user (mode 0700, owned by the user); a
ring file is a regular 0600 file owned by the user, of exactly
``HEADER_SIZE + capacity`` bytes. :func:`create_ring_file` builds a new one
under a hidden name, reserves its memory and links it into place, so a
reader never sees a ring without its header; :func:`open_ring_file` refuses
anything else before a byte of it is mapped. Whether a ring's producer still
runs is read from its pid and process start time (:func:`producer_alive`).
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import uuid
from pathlib import Path

import psutil

from ._errors import NotARing, RingError, RingPermissionError
from ._layout import HEADER_SIZE, STATIC, Header, parse_header


def default_directory() -> Path:
    """The default rings directory: private to this user, on tmpfs."""
    return Path("/dev/shm") / f"collector-{os.geteuid()}"


def ensure_private_directory(directory: str | os.PathLike[str]) -> Path:
    """Create ``directory`` with mode 0700 if missing; refuse an unsafe one."""
    path = Path(directory)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise RingPermissionError(
            f"rings directory {path} is owned by uid {st.st_uid}, not by this "
            f"user (uid {os.geteuid()}): it must be private to the user"
        )
    if st.st_mode & 0o022:
        raise RingPermissionError(
            f"rings directory {path} has mode {stat.S_IMODE(st.st_mode):04o}: "
            "it must not be writable by group or others (use 0700)"
        )
    return path


# -- producer liveness ------------------------------------------------------------

def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def producer_alive(pid: int, start_time: float) -> bool:
    """True if ``pid`` runs and is the process that started at ``start_time``.

    A reused pid belongs to a process with another start time, so it does
    not count as the producer.
    """
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - start_time) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


# -- creating ---------------------------------------------------------------------

_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14+


def prefault(mm: mmap.mmap, size: int) -> None:
    """Map every page of a new ring writable now, not on the first lap.

    A first write to a page faults (a few µs on a virtual machine): spread
    over the first lap that costs a producer more than its writes. Done once
    at creation, in the worker's start-up.
    """
    try:
        mm.madvise(_MADV_POPULATE_WRITE)
        return
    except (OSError, ValueError, AttributeError):
        pass  # an older kernel: touch each page (the data area is all zeros)
    step = mmap.PAGESIZE
    for off in range(HEADER_SIZE, size, step):
        mm[off] = 0


def _allocate(fd: int, size: int, directory: Path) -> None:
    """Reserve the ring's memory now, so a full ``/dev/shm`` fails here.

    A sparse file on tmpfs gets its pages on first write: with the file
    system full, that write would kill the producer with ``SIGBUS``.
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return  # a file system without fallocate: pages come on first write
        if exc.errno == errno.ENOSPC:
            raise RingError(
                f"not enough space in {directory} for a ring of {size} bytes "
                f"(ring_capacity_bytes); free space there or make the ring smaller"
            ) from None
        raise


def create_ring_file(directory: Path, name: str, header: Header) -> tuple[int, Path]:
    """Create ``directory/name`` (mode 0600, exclusively) with ``header``; return (fd, path).

    The file is built under a hidden name, its memory reserved, its header
    written, then linked into place: a reader never sees a ring without its
    header, and an existing ring of that name is never overwritten.
    """
    path = directory / name
    size = HEADER_SIZE + header.capacity
    tmp = directory / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, size)
        _allocate(fd, size, directory)
        os.pwrite(fd, header.pack(), 0)
        os.link(tmp, path)  # fails if path exists: exclusive creation
    except BaseException:
        os.close(fd)
        raise
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    return fd, path


def unmap(mm: mmap.mmap, views: tuple[memoryview, ...], fd: int) -> None:
    """Release ``views`` of ``mm``, unmap it and close ``fd`` (a writer's or reader's close)."""
    try:
        for view in views:
            view.release()
        mm.close()
    except (BufferError, ValueError):
        pass  # a view still exported elsewhere: the mapping goes with the last one
    try:
        os.close(fd)
    except OSError:
        pass


# -- opening ----------------------------------------------------------------------

def open_ring_file(path: str, *, check_owner: bool = True) -> tuple[int, Header]:
    """Open an existing ring file read-write and validate it; return (fd, header).

    Refused before anything is mapped: a directory or special file and a
    file too short for a header (:class:`NotARing`), a file of another user
    or writable by group or others (:class:`RingPermissionError`, unless
    ``check_owner=False``), and a header :func:`parse_header` rejects.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except IsADirectoryError:
        raise NotARing(f"{path} is a directory, not a ring file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARing(f"{path} is not a regular file, so not a ring")
        if check_owner:
            if st.st_uid != os.geteuid():
                raise RingPermissionError(
                    f"ring {path} is owned by uid {st.st_uid}, not by this user "
                    f"(uid {os.geteuid()}): rings must be private to their user"
                )
            if st.st_mode & 0o022:
                raise RingPermissionError(
                    f"ring {path} has mode {stat.S_IMODE(st.st_mode):04o}: a ring "
                    "must not be writable by group or others (expected 0600)"
                )
        if st.st_size < HEADER_SIZE:
            raise NotARing(
                f"{path} is {st.st_size} bytes, shorter than a ring header "
                f"({HEADER_SIZE} bytes): not a ring"
            )
        header = parse_header(os.pread(fd, STATIC.size, 0), path, st.st_size)
    except BaseException:
        os.close(fd)
        raise
    return fd, header

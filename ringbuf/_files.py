"""Ring files on disk: private directories, creating and opening a ring file, liveness.

A rings directory is private to its user: owned by the user and not
writable by group or others (:func:`ensure_private_directory`, which the
daemon and the pump also use for their runtime directory); one that is not
is refused with what is wrong and how to fix it, and its mode is never
changed. A ring file is a regular 0600 file owned by the user, of exactly
``HEADER_SIZE + capacity`` bytes. :func:`create_ring_file` builds a new one
under a hidden name, reserves its memory, takes the producer's lock and
links it into place, so a reader never sees a ring without its header or
its lock; :func:`open_ring_file` refuses anything else before a byte of it
is mapped.

Liveness (the locks of :mod:`ringbuf._layout`): the producer holds an OFD
lock on byte ``PRODUCER_LOCK`` for its life; :func:`producer_alive` reads
it with ``F_OFD_GETLK`` and falls back on the header's pid and start time
only as a hint for a producer in this PID namespace that holds no lock.
:func:`lock_consumer` takes the consumer's byte. :func:`ring_file_problem`
says whether an open ring file is still the one at its path, whole.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import struct
import uuid
from pathlib import Path

import psutil

from ._errors import NotARing, RingError, RingPermissionError
from ._layout import CONSUMER_LOCK, HEADER_SIZE, PRODUCER_LOCK, STATIC, Header, parse_header


def default_directory() -> Path:
    """The default rings directory: private to this user, on tmpfs."""
    return Path("/dev/shm") / f"collector-{os.geteuid()}"


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def check_private_directory(path: Path, what: str = "rings directory") -> None:
    """Refuse ``path`` unless it is a directory of this user not writable by group or others.

    Raises :class:`RingPermissionError` saying what is wrong and how to fix
    it; a missing directory is :class:`FileNotFoundError`. Nothing is changed.
    """
    me = os.geteuid()
    lst = os.lstat(path)
    if stat.S_ISLNK(lst.st_mode) and lst.st_uid not in (me, 0):
        raise RingPermissionError(
            f"{what} {path} is a symbolic link owned by {_owner(lst.st_uid)}, not by this "
            f"user (uid {me}): another user could point it anywhere. Remove it (as its "
            "owner or root) or choose another path")
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise RingPermissionError(f"{what} {path} is not a directory; choose another path")
    if st.st_uid != me:
        raise RingPermissionError(
            f"{what} {path} is owned by {_owner(st.st_uid)}, not by this user (uid {me}): "
            "another user may have created it to read or forge your data. Remove it (as "
            "its owner or root) or choose another path; it must be a directory owned by "
            f"uid {me} and not writable by group or others (the daemon creates it 0700)")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise RingPermissionError(
            f"{what} {path} has mode {mode:04o}: it is writable by group or others, so "
            "another user could replace what is in it. Choose a private directory (one "
            "that does not exist yet is created 0700), or, if this one is yours alone, "
            f"`chmod 0700 {path}`; its mode is never changed for you")


def ensure_private_directory(directory: str | os.PathLike[str],
                             what: str = "rings directory") -> Path:
    """Create ``directory`` with mode 0700 if missing, then :func:`check_private_directory`.

    Missing parents are created with the default mode; an existing
    directory is only checked, never chmod-ed (a shared 1777 directory such
    as ``/tmp`` is refused and stays as it was).
    """
    path = Path(directory)
    try:
        os.lstat(path)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # created meanwhile: checked below like any existing one
    check_private_directory(path, what)
    return path


# -- locks and liveness -----------------------------------------------------------

# struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid (+ padding).
_FLOCK = struct.Struct("@hhqqi4x")
_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)


def _ofd(fd: int, cmd: int, kind: int, byte: int) -> int:
    raw = fcntl.fcntl(fd, cmd, _FLOCK.pack(kind, os.SEEK_SET, byte, 1, 0))
    return _FLOCK.unpack(raw)[0]


def _lock_byte(fd: int, byte: int) -> bool:
    """Take the OFD write lock on ``byte`` of the file (``fd`` open for writing); False if held."""
    try:
        _ofd(fd, _F_OFD_SETLK, fcntl.F_WRLCK, byte)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def lock_producer(fd: int) -> bool:
    """Take the producer's lock (``PRODUCER_LOCK``) on a ring file; False if another holds it."""
    return _lock_byte(fd, PRODUCER_LOCK)


def lock_consumer(fd: int) -> bool:
    """Take the consumer's lock (``CONSUMER_LOCK``); False if another consumer holds it.

    It is released when the last descriptor of this open file is closed.
    """
    return _lock_byte(fd, CONSUMER_LOCK)


def producer_locked(fd: int) -> bool:
    """True while a process holds the producer's lock (``fd``: any descriptor of the ring)."""
    return _ofd(fd, _F_OFD_GETLK, fcntl.F_WRLCK, PRODUCER_LOCK) != fcntl.F_UNLCK


def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def running_here(pid: int, start_time: float) -> bool:
    """True if ``pid`` runs in this PID namespace and started at ``start_time``.

    Only a hint: a producer in another PID namespace has another pid here,
    and a reused pid belongs to a process with another start time.
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


def producer_alive(fd: int, pid: int, start_time: float) -> bool:
    """True while the ring's producer runs: it holds its lock, or (a hint, for a
    producer that holds none) its pid and start time match a process here.

    A ring whose producer is alive is never removed, so the hint can only keep
    a ring longer, never remove one early.
    """
    return producer_locked(fd) or running_here(pid, start_time)


def ring_file_problem(fd: int, path: str, size: int) -> tuple[str, str] | None:
    """Whether the open ring ``fd`` is still the whole file at ``path``: None if so.

    Otherwise ``(kind, why)`` with kind ``"gone"`` (removed, nothing at the
    path), ``"replaced"`` (another file at the path) or ``"resized"`` (the
    file is no longer ``size`` bytes: truncated by someone, so its mapping
    would fault).
    """
    st = os.fstat(fd)
    if st.st_size != size:
        return "resized", (f"its size changed from {size} to {st.st_size} bytes "
                           "(truncated or extended by another process)")
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return "gone", "its file was removed"
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        if st.st_nlink == 0:
            return "replaced", "its file was removed and another file put in its place"
        return "replaced", "another file was put in its place (it was moved or renamed)"
    return None


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
    written and the producer's lock taken on ``fd``, then linked into place:
    a reader never sees a ring without its header or with its lock free
    while the producer runs, and an existing ring of that name is never
    overwritten. Closing ``fd`` (the last descriptor of that open file)
    releases the lock.
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
        # The producer's lock, held from before the ring is visible until it exits.
        if not lock_producer(fd):  # pragma: no cover - a new, private file
            raise RingError(f"cannot take the producer lock on the new ring {tmp}")
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

def open_ring_file(path: str, *, check_owner: bool = True,
                   writable: bool = True) -> tuple[int, Header]:
    """Open an existing ring file (read-write, or read-only) and validate it; return (fd, header).

    Refused before anything is mapped: a directory or special file and a
    file too short for a header (:class:`NotARing`), a file of another user
    or writable by group or others (:class:`RingPermissionError`, unless
    ``check_owner=False``), and a header :func:`parse_header` rejects.
    """
    mode = os.O_RDWR if writable else os.O_RDONLY
    try:
        fd = os.open(path, mode | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
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

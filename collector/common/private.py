"""Private directories and sockets, verified before use by the daemon and the pump.

Another local user can create ``/tmp/collector-<uid>`` (or the rings
directory) before you do and run a ``redis-server`` there: a pump on its
default URL would then read, and a daemon write, through a stranger's
server. So before the daemon uses its runtime or rings directory, and
before either service connects to the embedded Redis socket, the
directory must be owned by this user and not writable by group or others
(:func:`ringbuf.check_private_directory`), and the socket must be a socket
owned by this user. A missing directory is created 0700; an existing one is
never chmod-ed (a shared 1777 directory such as ``/tmp`` is refused and stays
as it was). A refusal is :class:`NotPrivate`, whose message says what is
wrong and how to fix it; the services exit 2 on it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import ringbuf

__all__ = ["NotPrivate", "private_directory", "private_socket"]


class NotPrivate(RuntimeError):
    """A directory or socket that another user could control; the message says how to fix it."""


def private_directory(path: str | os.PathLike[str], key: str, *, create: bool = True) -> Path:
    """``path`` (the value of config key ``key``), created 0700 if missing, verified private."""
    try:
        if create:
            return ringbuf.ensure_private_directory(path, key)
        ringbuf.check_private_directory(Path(path), key)
        return Path(path)
    except ringbuf.RingPermissionError as exc:
        raise NotPrivate(str(exc)) from None  # it names the key
    except OSError as exc:
        raise NotPrivate(f"{key}={str(path)!r}: cannot use it: {exc.strerror}") from None


def private_socket(path: str | os.PathLike[str], key: str) -> None:
    """Refuse a file at ``path`` that is not a unix socket of this user (nothing there: fine)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    me = os.geteuid()
    if not stat.S_ISSOCK(st.st_mode):
        raise NotPrivate(f"{key}: {path} is not a unix socket; remove it or choose another "
                         "directory")
    if st.st_uid != me:
        raise NotPrivate(
            f"{key}: the socket {path} is owned by uid {st.st_uid}, not by this user (uid "
            f"{me}): another user's server could be listening there. Remove it (as its "
            "owner or root) or choose another directory")

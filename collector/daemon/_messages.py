"""What the supervisor and a flusher say to each other on the flusher's pipe.

Commands (supervisor -> flusher): :class:`Assign` a ring to the flusher,
:class:`Release` it, :class:`Stop` by a deadline. Reports (flusher ->
supervisor): :class:`BadRing`, a ring the flusher cannot serve, with why
(:class:`BadKind`). They are pickled by ``multiprocessing.Connection``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class Assign:
    """Serve the ring at ``path`` (from its committed head); ``no`` names it in the
    flusher's ``ring_in_use`` gauge."""

    path: str
    no: int


@dataclass(frozen=True, slots=True)
class Release:
    """Stop serving the ring at ``path``; its uncommitted records stay in it."""

    path: str


@dataclass(frozen=True, slots=True)
class Stop:
    """Drain every ring, then exit, by ``deadline`` (``time.monotonic()``)."""

    deadline: float


Command = Assign | Release | Stop


class BadKind(StrEnum):
    """Why a ring cannot be served; the supervisor refuses or quarantines it."""

    CORRUPTED = "corrupted"  # a frame or the positions fail validation: quarantine
    NOT_A_RING = "notaring"  # not a ring, or a ring of another layout version: quarantine
    CHANGED = "changed"  # the file shrank or grew, or another file took its place: quarantine
    FAULT = "fault"  # reading it killed a flusher (SIGBUS): quarantine
    PERMISSION = "permission"  # owner or mode wrong, or cannot be opened: refuse

    @property
    def quarantine(self) -> bool:
        return self is not BadKind.PERMISSION


@dataclass(frozen=True, slots=True)
class BadRing:
    """The flusher dropped the ring at ``path``: ``kind``, and ``message`` saying why."""

    path: str
    kind: BadKind
    message: str

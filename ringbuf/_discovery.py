"""Finding the rings in a directory."""

from __future__ import annotations

import os
from pathlib import Path

from ._errors import NotARing, RingCorrupted
from ._files import default_directory
from ._layout import RING_SUFFIX, RingStats
from ._probe import RingProbe


def is_ring_name(name: str) -> bool:
    """True for a file name a ring may have (``*.ring``, not hidden: a ring being built is)."""
    return name.endswith(RING_SUFFIX) and not name.startswith(".")


def discover(directory: str | os.PathLike[str] | None = None) -> list[RingStats]:
    """The rings in ``directory`` (default: this user's) with their stats.

    Files that are not valid rings are skipped here; open them with
    :meth:`RingReader.open` to learn why. Rings are read with
    :class:`RingProbe` (``pread``, never mapped).
    """
    directory = Path(directory or default_directory())
    out: list[RingStats] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return out
    for name in names:
        if not is_ring_name(name):
            continue
        try:
            with RingProbe.open(directory / name) as r:
                out.append(r.stats())
        except (OSError, NotARing, RingCorrupted):
            continue
    return out

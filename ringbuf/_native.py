"""Which producer path this process takes: the native fast path or pure Python.

``ringbuf._cring`` (ringbuf/_cring.c, built by ``pip install`` when a C
compiler and the Python headers are there; optional) encodes a record dict
as msgpack straight into the ring's next frame and publishes ``tail`` with
a release store; the reader then loads ``tail`` with :func:`load_tail`, an
acquire load. Without the extension, or with ``COLLECTOR_PURE_PYTHON=1`` in
the environment when a writer is created, everything runs in pure Python,
the complete reference implementation: same frames, byte for byte.

:func:`active_path` names the path a writer created now takes (``native``
or ``pure``); :func:`why_pure` says why it is pure.
"""

from __future__ import annotations

import os
from typing import Any

try:
    from . import _cring  # type: ignore[attr-defined]
except ImportError:  # not built: no compiler at install time
    _cring = None

BUILT = _cring is not None
PURE_ENV = "COLLECTOR_PURE_PYTHON"


def forced_pure() -> bool:
    """True when ``COLLECTOR_PURE_PYTHON`` asks for the pure path (any value but 0/empty)."""
    return os.environ.get(PURE_ENV, "") not in ("", "0")


def active_path() -> str:
    """``native`` or ``pure``: the path a writer created now takes."""
    return "native" if BUILT and not forced_pure() else "pure"


def why_pure() -> str | None:
    """None on the native path, else why not."""
    if not BUILT:
        return "the C extension ringbuf._cring is not built"
    if forced_pure():
        return f"{PURE_ENV}=1"
    return None


def new_writer(mm: Any, max_record_bytes: int) -> Any:
    """The native writer over ``mm`` (``ringbuf._cring.Writer``); only when BUILT."""
    assert _cring is not None
    return _cring.Writer(mm, max_record_bytes)


def new_hot(careful: Any) -> Any:
    """``ringbuf._cring.Hot(careful)``: a record_hit that tries the installed native
    writer (``set_writer``) and hands what it declines to ``careful``; only when BUILT."""
    assert _cring is not None
    return _cring.Hot(careful)


if _cring is not None:
    load_acquire = _cring.load_acquire
    encode = _cring.encode
else:
    load_acquire = None
    encode = None

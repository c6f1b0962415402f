"""The life cycle of one enabled client: its ring, its lock, its counters.

:class:`_Core` owns what ``record_hit`` (:mod:`collector._hotpath`) does not
need on its way: opening this process's ring (on ``start()`` or the first
record), refusing records after ``stop()``, waiting for room with the block
policy, the reset in a forked child and the counters only this process can
see. It steers the hot path through ``set_write``, ``set_lock`` and, on the
native path, ``set_take`` (the open ring's native writer, installed with
its writer and removed with it) alone, always with the lock held (or, after
a fork, before any other thread runs). The path (``native`` or ``pure``,
:mod:`ringbuf._native`; ``ring_checksum`` keeps to pure) is chosen when the
client is created, logged once and in ``stats().path``.

``write`` is one of three functions:

``_open_and_write``  no ring open (new, or just forked): create the ring,
                     then write; if it cannot be created, drop and count
                     (``dropped_no_ring``), retry creation at most once a second
the ring's writer    running: ``RingWriter.write_unlocked`` (the ring counts
                     full and oversize drops in its header)
``_stopped_write``   after ``stop()``: drop and count ``dropped_after_stop``

If the ring's file is removed or replaced while this process writes into
it (an operator, a tmpfs clean-up, a daemon that quarantined it), the
writer notices within about ``RING_CHECK_S`` (:mod:`ringbuf._writer`: on its
careful path, never per call) and hands the write to ``_ring_gone``: the
records the old ring held that the daemon had not committed are counted in
``lost_ring_gone`` and logged, the old ring is abandoned (which releases its
lock) and the record goes into a new ring.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Literal

import ringbuf

from ._encode import make_encoder
from ._hotpath import Write, make_record_hit
from .common.log import RateLimited
from .config import CollectorConfig

log = logging.getLogger("collector.analytics")

State = Literal["new", "running", "stopped"]

NEW: State = "new"
RUNNING: State = "running"
STOPPED: State = "stopped"

_BLOCK_FIRST_SLEEP_S = 50e-6
_BLOCK_MAX_SLEEP_S = 1e-3
_OPEN_RETRY_S = 1.0
_LOG_EVERY_S = 60.0
RING_CHECK_S = 1.0  # how often a writer looks whether its ring file is still there


@dataclass(frozen=True, slots=True)
class AnalyticsStats:
    """A snapshot of one client's counters in this process."""

    enabled: bool
    state: State
    pid: int
    ring_path: str | None
    written: int  # records in the current ring (the ring header's count)
    dropped_in_ring: int  # full + oversize (+ block timeouts), current ring's header
    block_waits: int  # record_hit calls that found the ring full and waited (block policy)
    dropped_block_timeout: int  # block policy gave up (also in the ring header)
    dropped_after_stop: int  # refused after stop(); visible only here
    dropped_no_ring: int  # the ring could not be created; visible only here
    rings_opened: int
    lost_ring_gone: int = 0  # in rings removed or replaced under this process, uncommitted
    path: str = "pure"  # the record path: "native" (ringbuf._cring) or "pure" Python


class _Core:
    """One enabled client (see the module doc); ``record_hit`` is its hot path."""

    def __init__(self, cfg: CollectorConfig) -> None:
        self._rings_dir = cfg.rings_dir
        block = cfg.full_policy == "block"
        # The native path takes the record into the ring itself; not with checksums.
        self.path = "pure" if cfg.ring_checksum else ringbuf.ring_path()
        native = self.path == "native"
        self._ring_options = {
            "capacity_bytes": cfg.ring_capacity_bytes,
            "max_record_bytes": cfg.max_record_bytes,
            "checksum": cfg.ring_checksum,
            "thread_safe": False,  # the client's own lock serialises the writes
            "count_full_drops": not block,  # the block policy counts its final drop itself
            "on_gone": self._ring_gone,
            "check_interval_s": RING_CHECK_S,
            "native": native,
        }
        self._block_timeout_s = cfg.block_timeout_ms / 1000.0
        self.state: State = NEW
        self._writer: ringbuf.RingWriter | None = None
        self._reset_counts()
        self._next_open_try = 0.0
        self._limiter = RateLimited(_LOG_EVERY_S)
        self._lock = threading.Lock()
        self._write: Write = self._open_and_write
        fast, slow = make_encoder(cfg.encoder)
        if block:
            hot = make_record_hit(fast, slow, self._write, self._lock,
                                  note_full=self._note_full, wait_for_room=self._wait_for_room,
                                  native=native)
        else:
            hot = make_record_hit(fast, slow, self._write, self._lock, native=native)
        self.record_hit = hot.record_hit
        self._hot = hot
        why = "ring_checksum" if cfg.ring_checksum else ringbuf._native.why_pure()
        log.info("analytics client path=%s%s pid=%d", self.path,
                 "" if native else f" why={why!r}", os.getpid())

    def _reset_counts(self) -> None:
        self.rings_opened = 0
        self.dropped_after_stop = 0
        self.dropped_block_timeout = 0
        self.block_waits = 0
        self.dropped_no_ring = 0
        self.lost_ring_gone = 0

    def _install(self, write: Write, writer: ringbuf.RingWriter | None = None) -> None:
        """Make ``write`` the hot path's write function (lock held); on the native
        path the open ``writer``'s native writer takes records, or none."""
        self._write = write
        self._hot.set_write(write)
        self._hot.set_take(writer.native_writer if writer is not None else None)

    # -- the three write functions ----------------------------------------------------
    def _open_ring(self) -> ringbuf.RingWriter:
        """Create this process's ring and write into it from now on (lock held)."""
        w = ringbuf.RingWriter.create(self._rings_dir, **self._ring_options)  # type: ignore[arg-type]
        self._writer = w
        self._install(w.write_unlocked, w)
        self.state = RUNNING
        self.rings_opened += 1
        log.debug("analytics ring opened path=%s pid=%d", w.path, os.getpid())
        return w

    def _open_and_write(self, payload: bytes) -> bool:
        now = time.monotonic()
        if now < self._next_open_try:
            self.dropped_no_ring += 1
            return False
        try:
            w = self._open_ring()
        except (OSError, ringbuf.RingError) as exc:
            self.dropped_no_ring += 1
            self._next_open_try = now + _OPEN_RETRY_S
            if self._limiter.hit("open") is not None:
                log.error("analytics ring cannot be created, records are dropped "
                          "rings_dir=%s error=%r", self._rings_dir, exc)
            return False
        return w.write_unlocked(payload)

    def _ring_gone(self, payload: bytes, why: str) -> bool:
        """The ring's file was removed or replaced under this process (lock held)."""
        w, self._writer = self._writer, None
        lost = 0
        if w is not None:
            lost = max(0, w.uncommitted)
            w.abandon()  # releases its lock; nobody reads that file any more
            self.lost_ring_gone += lost
            held = self._limiter.hit("gone")
            if held is not None:
                log.error("analytics ring file was removed or replaced while in use; "
                          "records the daemon had not taken are lost, opening a new ring "
                          "path=%s why=%r lost=%d lost_ring_gone=%d pid=%d", w.path, why,
                          lost, self.lost_ring_gone, os.getpid())
        self._install(self._open_and_write)
        self._next_open_try = 0.0
        return self._open_and_write(payload)

    def _stopped_write(self, payload: bytes) -> bool:
        self.dropped_after_stop += 1
        if self._limiter.hit("after-stop") is not None:
            log.warning("analytics record refused after stop() pid=%d "
                        "dropped_after_stop=%d", os.getpid(), self.dropped_after_stop)
        return False

    # -- block policy -------------------------------------------------------------------
    def _note_full(self) -> bool:
        """The ring was full (lock held): True if a ring is open, so waiting makes sense."""
        if self.state is not RUNNING:
            return False  # the write was a refusal, already counted
        self.block_waits += 1
        return True

    def _wait_for_room(self, payload: bytes) -> bool:
        """Retry the write for up to ``block_timeout_ms``, sleeping without the lock."""
        deadline = time.monotonic() + self._block_timeout_s
        delay = _BLOCK_FIRST_SLEEP_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(delay, left))
            delay = min(delay * 2, _BLOCK_MAX_SLEEP_S)
            with self._lock:
                if self.state is not RUNNING:
                    return self._write(payload)  # counts as after-stop / reopens
                if self._write(payload):
                    return True
        with self._lock:
            writer = self._writer
            if self.state is not RUNNING or writer is None:
                return self._write(payload)
            self.dropped_block_timeout += 1
            writer.count_drop()
        return False

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self.state is RUNNING:
                return
            self._next_open_try = 0.0
            self._open_ring()

    def ensure_ring(self) -> None:
        """Open the ring now unless stopped (the gunicorn post_fork hook)."""
        with self._lock:
            if self.state is NEW:
                self._open_ring()

    def stop(self, timeout_s: float) -> bool:
        with self._lock:
            if self.state is STOPPED:
                return True
            self.state = STOPPED
            self._install(self._stopped_write)
            w, self._writer = self._writer, None
        if w is None:
            return True
        if w.owner_pid != os.getpid():
            # Forked without CPython's at-fork hooks: not our ring.
            w.abandon()
            return True
        drained = _wait_drained(w, timeout_s)
        w.close()
        return drained

    def after_fork_child(self) -> None:
        """Reset in a forked child, before any other thread runs (see ``collector._client``)."""
        self._lock = threading.Lock()  # another thread may have held the parent's
        self._hot.set_lock(self._lock)
        if self._writer is not None:
            self._writer.abandon()  # the parent's ring: unmap, never mark closed
            self._writer = None
        if self.state is RUNNING:
            self.state = NEW
            self._install(self._open_and_write)
        self._reset_counts()

    def stats(self) -> AnalyticsStats:
        with self._lock:
            w = self._writer
            return AnalyticsStats(
                enabled=True,
                state=self.state,
                pid=os.getpid(),
                ring_path=w.path if w is not None else None,
                written=w.written if w is not None else 0,
                dropped_in_ring=w.dropped if w is not None else 0,
                block_waits=self.block_waits,
                dropped_block_timeout=self.dropped_block_timeout,
                dropped_after_stop=self.dropped_after_stop,
                dropped_no_ring=self.dropped_no_ring,
                rings_opened=self.rings_opened,
                lost_ring_gone=self.lost_ring_gone,
                path=self.path,
            )


def _wait_drained(w: ringbuf.RingWriter, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the daemon to have taken every record of ``w``."""
    drained = w.free_bytes() == w.capacity
    if not drained and timeout_s > 0:
        deadline = time.monotonic() + timeout_s
        delay = 1e-3
        while not drained and time.monotonic() < deadline:
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.05)
            drained = w.free_bytes() == w.capacity
    return drained

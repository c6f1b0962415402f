"""The pool of flusher processes: ``pool_size`` slots, each a spawned flusher.

A slot keeps its rings and its shared counters across restarts: a flusher
that dies is restarted in the same slot with the same rings, which resume
from their committed head (a flusher that keeps dying at once is restarted
at most once a second). Before the restart the pool tells ``on_death`` which
ring the flusher was touching when it died (its ``ring_in_use`` gauge), so
the ring triage can quarantine a ring that killed it instead of handing it
to the next flusher forever. Rings go to the least-loaded slot when they
appear and then stay there; each gets a number (:attr:`Assign.no`). The
pool talks to its flushers only through :mod:`._messages` on each slot's
pipe.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from typing import Any

from collector.common.log import get_logger
from collector.config import CollectorConfig

from ._flusher import flusher_main
from ._messages import Assign, BadRing, Command, Release, Stop
from ._metrics import FLUSHER_COUNTERS

_log = get_logger(__name__)

OnDeath = Callable[["FlusherSlot", int, "str | None"], None]


class FlusherSlot:
    """One place in the flusher pool; a restarted flusher takes the same slot."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.counters = FLUSHER_COUNTERS.new_slot()
        self.proc: Any = None
        self.conn: Connection | None = None
        self.rings: dict[str, int] = {}  # path -> its number (Assign.no)
        self.restarts = 0
        self.started_at = 0.0
        self.restart_at = 0.0
        self.up = False  # maintained by the main thread; read by HTTP threads

    def alive(self) -> bool:
        return self.up

    def send(self, msg: Command) -> None:
        if self.conn is None:
            return
        try:
            self.conn.send(msg)
        except (OSError, ValueError):
            pass  # the flusher is dying; its death is handled with its rings


class FlusherPool:
    """``pool_size`` slots; ``stopping()`` says when dead flushers stay dead."""

    def __init__(self, cfg: CollectorConfig, stopping: Callable[[], bool]) -> None:
        self.cfg = cfg
        self.stopping = stopping
        self.mp_context = mp.get_context("spawn")
        self.slots = [FlusherSlot(i) for i in range(cfg.pool_size)]
        self._numbers = 0

    # -- rings ----------------------------------------------------------------------
    def assign(self, path: str) -> FlusherSlot:
        """Give the ring at ``path`` to the least-loaded slot."""
        slot = min(self.slots, key=lambda s: (len(s.rings), s.index))
        self._numbers += 1
        slot.rings[path] = self._numbers
        slot.send(Assign(path, self._numbers))
        return slot

    def release(self, slot: FlusherSlot, path: str) -> None:
        slot.rings.pop(path, None)
        slot.send(Release(path))

    # -- processes ------------------------------------------------------------------
    def start(self, slot: FlusherSlot) -> None:
        parent, child = self.mp_context.Pipe(duplex=True)
        proc = self.mp_context.Process(
            target=flusher_main,
            args=(slot.index, self.cfg, child, slot.counters, os.getpid(),
                  sorted(slot.rings.items())),
            name=f"collector-flusher-{slot.index}",
        )
        proc.start()
        child.close()
        slot.proc = proc
        slot.conn = parent
        slot.started_at = time.monotonic()
        slot.up = True
        _log.info("Started a flusher.", slot=slot.index, pid=proc.pid, rings=len(slot.rings))

    def start_all(self) -> None:
        for slot in self.slots:
            self.start(slot)

    def restart_due(self, now: float) -> None:
        """Restart the dead flushers whose restart time has come."""
        for slot in self.slots:
            if slot.proc is None and now >= slot.restart_at and not self.stopping():
                self.start(slot)

    def _on_exit(self, slot: FlusherSlot, on_death: OnDeath) -> None:
        proc = slot.proc
        proc.join(1)
        slot.up = False
        if slot.conn is not None:
            slot.conn.close()
            slot.conn = None
        in_use = int(slot.counters.get("ring_in_use"))
        slot.counters.set("ring_in_use", 0)  # the dead flusher cannot clear it
        if self.stopping():
            return
        lived = time.monotonic() - slot.started_at
        suspect = next((p for p, no in slot.rings.items() if no == in_use), None)
        _log.error("A flusher died; restarting it. Its rings resume from their committed "
                   "head (the batch in flight, if any, is sent again).", slot=slot.index,
                   pid=proc.pid, exitcode=proc.exitcode, rings=len(slot.rings),
                   ring_in_use=suspect)
        on_death(slot, proc.exitcode, suspect)
        slot.restarts += 1
        slot.proc = None
        # A flusher that keeps dying at once is restarted at most once a second.
        slot.restart_at = time.monotonic() + (1.0 if lived < 1.0 else 0.0)

    def wait(self, timeout: float, on_report: Callable[[FlusherSlot, BadRing], None],
             on_death: OnDeath, extra: Iterable[Any] = ()) -> list[Any]:
        """Wait up to ``timeout`` for a report, a flusher's death or one of ``extra``.

        Reports go to ``on_report``; a death goes to ``on_death(slot, exitcode,
        the ring it was touching or None)`` and its restart is scheduled;
        returns the objects of ``extra`` that are ready.
        """
        objs: list[Any] = list(extra)
        by_obj: dict[Any, tuple[str, FlusherSlot]] = {}
        for slot in self.slots:
            if slot.proc is not None and slot.up:
                by_obj[slot.proc.sentinel] = ("dead", slot)
                objs.append(slot.proc.sentinel)
            if slot.conn is not None:
                by_obj[slot.conn] = ("msg", slot)
                objs.append(slot.conn)
        ready = wait(objs, timeout)
        for obj in ready:
            if obj not in by_obj:
                continue
            kind, slot = by_obj[obj]
            if kind == "msg":
                try:
                    while slot.conn is not None and slot.conn.poll(0):
                        msg = slot.conn.recv()
                        if isinstance(msg, BadRing):
                            on_report(slot, msg)
                except (EOFError, OSError):
                    pass  # the sentinel reports the death
        for obj in ready:
            if obj in by_obj and by_obj[obj][0] == "dead":
                self._on_exit(by_obj[obj][1], on_death)
        return [obj for obj in ready if obj not in by_obj]

    # -- stopping -------------------------------------------------------------------
    def send_stop(self, deadline: float) -> None:
        for slot in self.slots:
            slot.send(Stop(deadline))

    def running(self) -> list[FlusherSlot]:
        return [s for s in self.slots if s.proc is not None and s.up]

    def kill_late(self) -> None:
        """Kill the flushers that did not stop in time (their records stay in their rings)."""
        for s in self.running():
            _log.error("A flusher did not stop in time; killing it (its records stay "
                       "in its rings).", slot=s.index, pid=s.proc.pid)
            s.proc.kill()
            s.proc.join(5)
            s.up = False

    def kill_now(self) -> None:
        """SIGKILL every flusher without waiting (a forced exit)."""
        for slot in self.slots:
            if slot.proc is not None and slot.proc.pid:
                try:
                    os.kill(slot.proc.pid, signal.SIGKILL)
                except OSError:
                    pass

    def close(self) -> None:
        """Kill and reap the flushers still running."""
        for slot in self.running():
            slot.proc.kill()
            slot.proc.join(5)
            slot.up = False

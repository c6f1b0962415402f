"""Ring triage: which files of the rings directory are served, refused or quarantined.

Every ``scan_interval_ms`` the supervisor lists the rings directory and
:class:`RingTriage` sorts what it finds before any flusher sees it:

* owned by another user, or writable by group/others: refused and reported
  (left in place; looked at again if their owner, mode or inode changes);
* not a ring, a ring of another layout version, or corrupted (also when a
  flusher finds a bad frame later and reports it): moved to ``quarantine/``
  and reported;
* a valid ring: given to a flusher of the pool (:meth:`FlusherPool.assign`),
  which keeps it;
* a served ring that shrank, grew or was replaced by another file (found
  here or by its flusher): quarantined, saying why;
* a served ring whose producer is gone (its lock is free, :mod:`ringbuf._files`)
  or closed, and whose every record was committed to Redis: removed. A ring
  whose producer is alive is never removed.

The supervisor never maps a ring: it reads headers with ``pread``
(:class:`ringbuf.RingProbe`), so a ring truncated under it cannot fault it.
When a flusher dies, :meth:`RingTriage.on_flusher_death` looks at its rings
before it is restarted: a changed file is quarantined, and a ring the
flusher was reading when ``SIGBUS`` killed it is quarantined once its file
is bad or once it has killed ``FAULTS_TO_QUARANTINE`` flushers.

The snapshot of the served rings' stats (``snapshot``) and the totals are
what ``/metrics`` and ``/readyz`` report.
"""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import ringbuf
from collector.common.log import RateLimited, get_logger

from ._messages import BadKind, BadRing
from ._pool import FlusherPool, FlusherSlot

_log = get_logger(__name__)

QUARANTINE = "quarantine"
FAULTS_TO_QUARANTINE = 2  # SIGBUS deaths of its flushers that quarantine a ring that looks fine


class _Served:
    """A ring being served: the supervisor's probe (pread, for stats) and its slot."""

    __slots__ = ("faults", "probe", "slot")

    def __init__(self, probe: ringbuf.RingProbe, slot: FlusherSlot) -> None:
        self.probe = probe
        self.slot = slot
        self.faults = 0  # flushers it killed with SIGBUS


def _stat_key(path: str) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1, -1)
    return (st.st_uid, stat.S_IMODE(st.st_mode), st.st_ino)


class RingTriage:
    def __init__(self, rings_dir: Path, pool: FlusherPool) -> None:
        self.rings_dir = rings_dir
        self.pool = pool
        self.served: dict[str, _Served] = {}
        self.refused: dict[str, tuple[int, int, int]] = {}  # path -> (uid, mode, inode)
        self.snapshot: list[ringbuf.RingStats] = []
        self.removed_drops = [0, 0]  # dropped_full, dropped_oversize of removed rings
        self.quarantined_total = 0
        self.removed_total = 0
        self.limiter = RateLimited(10.0)

    def scan(self, adopt: bool = True) -> None:
        """Look at the directory once; ``adopt=False`` (stopping) serves no new ring."""
        try:
            names = os.listdir(self.rings_dir)
        except OSError as exc:
            held = self.limiter.hit("listdir")
            if held is not None:
                _log.error("Cannot list the rings directory.", rings_dir=str(self.rings_dir),
                           error=str(exc), suppressed=held)
            return
        seen: set[str] = set()
        for name in names:
            if not ringbuf.is_ring_name(name):
                continue
            path = str(self.rings_dir / name)
            seen.add(path)
            if path in self.served:
                continue
            if path in self.refused:
                if _stat_key(path) == self.refused[path]:
                    continue
                del self.refused[path]  # owner or mode changed: look again
            if adopt:
                self._adopt(path)
        for path in [p for p in self.served if p not in seen]:
            _log.warning("A ring file disappeared; forgetting it.", ring=path)
            self._forget(path)
        for path in [p for p in self.refused if p not in seen]:
            del self.refused[path]
        snapshot = []
        for path, info in list(self.served.items()):
            if self._changed(path, info):
                continue
            try:
                st = info.probe.stats()
            except ringbuf.RingCorrupted as exc:
                self._drop(path, BadRing(path, BadKind.CORRUPTED, str(exc)))
                continue
            except (ValueError, OSError):
                continue
            if ((st.closed or not st.producer_alive) and st.bytes_used == 0
                    and st.written == st.committed):
                self._remove(path, st)
            else:
                snapshot.append(st)
        self.snapshot = snapshot

    def on_bad(self, slot: FlusherSlot, report: BadRing) -> None:
        """A flusher dropped a ring it cannot serve: refuse or quarantine it."""
        slot.rings.pop(report.path, None)
        self._drop(report.path, report)

    def on_flusher_death(self, slot: FlusherSlot, exitcode: int, in_use: str | None) -> None:
        """Before a dead flusher's restart: quarantine the rings of its slot that changed,
        and the one it was reading if ``SIGBUS`` killed it and the ring is to blame."""
        for path, info in list(self.served.items()):
            if info.slot is slot:
                self._changed(path, info)
        if exitcode != -signal.SIGBUS or in_use is None:
            return
        info = self.served.get(in_use)
        if info is None:
            return  # already quarantined above
        info.faults += 1
        if info.faults >= FAULTS_TO_QUARANTINE:
            self._drop(in_use, BadRing(in_use, BadKind.FAULT,
                                       f"ring {in_use}: reading it killed {info.faults} "
                                       "flushers with SIGBUS"))
        else:
            _log.warning("A flusher died of SIGBUS while reading a ring whose file looks "
                         "intact; serving it again.", ring=in_use, faults=info.faults)

    def close(self) -> None:
        for info in self.served.values():
            info.probe.close()

    # -- one ring ---------------------------------------------------------------------
    def _changed(self, path: str, info: _Served) -> bool:
        """Quarantine (or forget, if removed) a served ring whose file changed: True if so."""
        try:
            found = info.probe.problem()
        except OSError:
            return False
        if found is None:
            return False
        kind, why = found
        if kind == "gone":
            _log.warning("A ring file disappeared; forgetting it.", ring=path)
            self._forget(path)
        else:
            self._drop(path, BadRing(path, BadKind.CHANGED, f"ring {path}: {why}"))
        return True

    def _drop(self, path: str, report: BadRing) -> None:
        """Stop serving ``path`` (if served), then refuse or quarantine what is there."""
        self._forget(path)
        if report.kind.quarantine:
            self._quarantine(path, report.message)
        else:
            self._refuse(path, report.message)

    def _adopt(self, path: str) -> None:
        try:
            probe = ringbuf.RingProbe.open(path)
        except ringbuf.RingPermissionError as exc:
            self._refuse(path, str(exc))
            return
        except (ringbuf.NotARing, ringbuf.RingCorrupted) as exc:
            self._quarantine(path, str(exc))
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            held = self.limiter.hit("open:" + path)
            if held is not None:
                _log.error("Cannot open a ring.", ring=path, error=str(exc), suppressed=held)
            return
        slot = self.pool.assign(path)
        self.served[path] = _Served(probe, slot)
        _log.info("Found a ring.", ring=path, ring_id=probe.ring_id, slot=slot.index,
                  producer_pid=probe.header.producer_pid)

    def _forget(self, path: str) -> None:
        info = self.served.pop(path, None)
        if info is None:
            return
        self.pool.release(info.slot, path)
        info.probe.close()

    def _remove(self, path: str, st: ringbuf.RingStats) -> None:
        """Remove a drained ring of a dead (or closed) producer."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            _log.error("Cannot remove a drained ring.", ring=path, error=str(exc))
            return
        self._forget(path)
        self.removed_drops[0] += st.dropped_full
        self.removed_drops[1] += st.dropped_oversize
        self.removed_total += 1
        _log.info("Removed the drained ring of a finished producer.", ring=path,
                  ring_id=st.ring_id, producer_pid=st.producer_pid, records=st.written,
                  dropped=st.dropped, closed=st.closed)

    def _quarantine(self, path: str, why: str) -> None:
        qdir = self.rings_dir / QUARANTINE
        try:
            qdir.mkdir(mode=0o700, exist_ok=True)
            name = os.path.basename(path)
            dest = qdir / name
            if dest.exists():
                dest = qdir / f"{name}.{int(time.time() * 1000)}"
            os.rename(path, dest)
        except FileNotFoundError:
            return
        except OSError as exc:
            _log.error("Cannot quarantine a bad ring file; ignoring it.", ring=path,
                       why=why, error=str(exc))
            self.refused[path] = _stat_key(path)
            return
        self.quarantined_total += 1
        _log.error("Quarantined a ring file that is not a valid ring (or no longer one); the "
                   "other rings are still served.", ring=path, moved_to=str(dest), why=why)

    def _refuse(self, path: str, why: str) -> None:
        self.refused[path] = _stat_key(path)
        _log.error("Refused a ring: it must be owned by this user and not writable by "
                   "group or others.", ring=path, why=why)

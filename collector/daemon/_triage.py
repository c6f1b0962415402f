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
* a served ring whose producer is dead (pid + start time) or closed, and
  whose every record was committed to Redis: removed.

The snapshot of the served rings' stats (``snapshot``) and the totals are
what ``/metrics`` and ``/readyz`` report.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import ringbuf
from collector.common.log import RateLimited, get_logger

from ._messages import BadRing
from ._pool import FlusherPool, FlusherSlot

_log = get_logger(__name__)

QUARANTINE = "quarantine"


class _Served:
    """A ring being served: the supervisor's reader (for stats) and its slot."""

    __slots__ = ("reader", "slot")

    def __init__(self, reader: ringbuf.RingReader, slot: FlusherSlot) -> None:
        self.reader = reader
        self.slot = slot


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
            try:
                st = info.reader.stats()
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
        path = report.path
        info = self.served.pop(path, None)
        if info is not None:
            info.slot.rings.discard(path)
            info.reader.close()
        slot.rings.discard(path)
        if report.kind.quarantine:
            self._quarantine(path, report.message)
        else:
            self._refuse(path, report.message)

    def close(self) -> None:
        for info in self.served.values():
            info.reader.close()

    # -- one ring ---------------------------------------------------------------------
    def _adopt(self, path: str) -> None:
        try:
            reader = ringbuf.RingReader.open(path)
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
        self.served[path] = _Served(reader, slot)
        _log.info("Found a ring.", ring=path, ring_id=reader.ring_id, slot=slot.index,
                  producer_pid=reader.producer_pid)

    def _forget(self, path: str) -> None:
        info = self.served.pop(path, None)
        if info is None:
            return
        self.pool.release(info.slot, path)
        info.reader.close()

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
        _log.error("Quarantined a ring file that is not a valid ring; the other rings are "
                   "still served.", ring=path, moved_to=str(dest), why=why)

    def _refuse(self, path: str, why: str) -> None:
        self.refused[path] = _stat_key(path)
        _log.error("Refused a ring: it must be owned by this user and not writable by "
                   "group or others.", ring=path, why=why)

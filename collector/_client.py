"""``collector.Analytics``: the in-app client that buffers records in this process's ring.

Hot path
--------
``record_hit(record)`` is a closure installed on the instance (like
``RingWriter.try_write``), built by :mod:`collector._hotpath`: on the
native path (``stats().path``) the C writer encodes the record straight into
the ring's next frame; otherwise, and for whatever it declines, encode, then
the ring's lock-free ``write_unlocked`` under one in-process lock, every
piece of state in closure cells. Threads of one process share the ring
through that lock; it is the client's own (not the ring's) because it also
guards the swap of the write function when the ring is opened, closed or
dropped after a fork (:mod:`collector._core`).

Life cycle
----------
``new``      created; the ring is opened by ``start()`` or lazily by the first
             ``record_hit`` (so a gunicorn master that only imports the app
             never creates a ring)
``running``  the ring is open; ``record_hit`` returns ``True`` when buffered
``stopped``  ``stop()`` closed the ring (marked closed: collector-daemon
             drains it, then removes it); ``record_hit`` returns ``False``
             and counts ``dropped_after_stop``. ``start()`` opens a new ring.

Where drops are counted
-----------------------
- ring full, policy ``drop``: by the ring itself (header ``dropped_full``),
  which the daemon exports as a metric;
- ring full, policy ``block``: the ring is told not to count the attempts;
  the client counts the final drop in the ring header after the wait
  (``RingWriter.count_drop``) and in ``stats().dropped_block_timeout``;
- oversize record: by the ring (``dropped_oversize``), and
  :class:`ringbuf.RecordTooLarge` is raised;
- after ``stop()``: the ring is closed (unmapped), so only this process can
  count them: ``stats().dropped_after_stop``, and a warning is logged
  (at most once a minute);
- the ring cannot be created (rings directory unusable): an error is
  logged (at most once a minute), ``stats().dropped_no_ring`` counts, and
  creation is retried at most once a second. ``start()`` raises instead.
- the ring's file was removed or replaced while in use: the records it held
  that the daemon had not committed are counted in ``stats().lost_ring_gone``
  (they were buffered, so ``record_hit`` had returned ``True``), an error is
  logged and a new ring takes the next records (``collector._core``).

Fork safety
-----------
One ``os.register_at_fork(after_in_child=...)`` hook, run by ``os.fork()``
and by anything that forks through CPython (multiprocessing's ``fork``
context, gunicorn), resets every live client in the child: a fresh lock
(another thread may have held the parent's), the inherited writer is
*abandoned* (unmapped without marking the parent's ring closed; its
descriptor is closed too, so the child does not hold the parent's liveness
lock and keep its ring alive after the parent died), and the
child's first ``record_hit`` (or ``start()``, or the gunicorn ``post_fork``
hook) creates the child's own ring named after its pid. The hook costs
nothing per call; a per-call ``os.getpid()`` check would be a system call
per record (glibc no longer caches the pid), so it is not done. A fork that
bypasses CPython's at-fork machinery (``fork()`` from C without
``PyOS_AfterFork_Child``) is unsupported by CPython itself; even
then ``stop()`` and the exit handler compare the ring's owner pid with
``os.getpid()`` and only abandon a ring they did not create.

``stop()`` is also registered with ``atexit`` for every live client (a
child leaving through ``os._exit``, as multiprocessing's do, skips it: its
ring then stays unclosed, and the daemon drains and removes it once it sees
the producer is dead).

Block policy
------------
``full_policy: block`` waits up to ``block_timeout_ms`` for room. The
consumer is another process and there is nothing to wait on, so the client
polls: it sleeps 50 us, doubling up to 1 ms, with a ``time.monotonic()``
deadline, and retries the write (without holding the lock while it sleeps).
"""

from __future__ import annotations

import atexit
import logging
import os
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ringbuf

from ._core import STOPPED, AnalyticsStats, State, _Core
from .config import CollectorConfig, ConfigError, load_config

__all__ = ["Analytics", "AnalyticsStats", "State", "live_clients", "rings_dirs"]

log = logging.getLogger("collector.analytics")


def _check_ring_sizes(cfg: CollectorConfig) -> None:
    try:
        ringbuf.check_capacity(cfg.ring_capacity_bytes, cfg.max_record_bytes)
    except ValueError as exc:
        raise ConfigError(f"ring_capacity_bytes: {exc}") from None


def _disabled_record_hit(record: Mapping[str, Any]) -> bool:
    return False


class Analytics:
    """Buffers per-request records in this process's ring for ``collector-daemon``.

    ``Analytics(options)`` takes a :class:`CollectorConfig`, a mapping of
    config keys (used as given: no environment overrides) or ``None``
    (every default). :meth:`from_config` reads a YAML file or mapping *and*
    the ``COLLECTOR_*`` environment, like the daemon does.

    ``record_hit`` is the hot path; ``start``/``stop`` are optional (the
    first ``record_hit`` opens the ring, ``atexit`` stops). Usable as a
    context manager.
    """

    config: CollectorConfig

    def __init__(self, options: CollectorConfig | Mapping[str, Any] | None = None) -> None:
        if isinstance(options, CollectorConfig):
            cfg = options
        elif options is None or isinstance(options, Mapping):
            cfg = load_config(options or {}, environ={})
        else:
            raise TypeError(
                "options must be a CollectorConfig, a mapping of config keys or None, "
                f"got {type(options).__qualname__}"
            )
        _check_ring_sizes(cfg)
        self.config = cfg
        self._core: _Core | None = _Core(cfg) if cfg.enabled else None
        if self._core is not None:
            self.record_hit = self._core.record_hit  # type: ignore[method-assign]
            _LIVE.add(self)
            # A client dropped without stop() still closes its ring (the core
            # does not refer back to self, so this does not keep it alive).
            weakref.finalize(self, self._core.stop, 0.0).atexit = False
        else:
            self.record_hit = _disabled_record_hit  # type: ignore[method-assign]

    @classmethod
    def from_config(
        cls,
        source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> Analytics:
        """Build from a YAML file path or mapping plus ``COLLECTOR_*`` environment variables.

        With no ``source``, the file named by ``$COLLECTOR_CONFIG`` is read if
        set (the variable ``collector-daemon --config`` also reads), else the
        defaults apply. Raises :class:`ConfigError` naming the file, the key
        and the rule.
        """
        env = os.environ if environ is None else environ
        if source is None and env.get("COLLECTOR_CONFIG"):
            source = env["COLLECTOR_CONFIG"]
        return cls(load_config(source, environ=env))

    # Replaced per instance in __init__ by the closure (see the module doc).
    def record_hit(self, record: Mapping[str, Any]) -> bool:
        """Buffer one record; ``True`` if buffered, ``False`` if dropped (and counted).

        Never blocks with ``full_policy: drop``; with ``block`` waits at most
        ``block_timeout_ms``. Raises ``TypeError`` naming the field for a
        value that cannot be encoded and :class:`ringbuf.RecordTooLarge`
        (naming size and limit) for a record over ``max_record_bytes``.
        """
        raise NotImplementedError  # pragma: no cover

    @property
    def enabled(self) -> bool:
        return self._core is not None

    @property
    def state(self) -> State:
        return self._core.state if self._core is not None else STOPPED

    def start(self) -> Analytics:
        """Open this process's ring now (raises if the rings directory is unusable)."""
        if self._core is not None:
            self._core.start()
        return self

    def stop(self, timeout_s: float = 0.0) -> bool:
        """Close the ring (the daemon drains it, then removes it). Idempotent.

        The records stay in the ring file; with ``timeout_s > 0`` this waits
        up to that long for the daemon to have taken them all. Returns
        ``True`` if nothing buffered is left in the ring.
        """
        if self._core is None:
            return True
        return self._core.stop(timeout_s)

    def stats(self) -> AnalyticsStats:
        if self._core is None:
            return AnalyticsStats(False, STOPPED, os.getpid(), None, 0, 0, 0, 0, 0, 0, 0)
        return self._core.stats()

    @property
    def ring_path(self) -> str | None:
        return self.stats().ring_path

    def _ensure_ring(self) -> None:
        if self._core is not None:
            self._core.ensure_ring()

    def __enter__(self) -> Analytics:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"Analytics(enabled={self.enabled}, state={self.state!r}, "
                f"rings_dir={self.config.rings_dir!r})")


# -- process-wide hooks ------------------------------------------------------
_LIVE: weakref.WeakSet[Analytics] = weakref.WeakSet()


def live_clients() -> list[Analytics]:
    """Every enabled client alive in this process."""
    return list(_LIVE)


def rings_dirs() -> list[Path]:
    return sorted({Path(a.config.rings_dir) for a in live_clients()})


def _after_fork_in_child() -> None:
    for client in list(_LIVE):
        core = client._core
        if core is not None:
            core.after_fork_child()


def _stop_all_at_exit() -> None:
    for client in list(_LIVE):
        try:
            client.stop()
        except Exception as exc:  # never fail interpreter exit
            log.warning("analytics stop at exit failed error=%r", exc)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_stop_all_at_exit)

"""``collector.Analytics``: the in-app client that buffers records in this process's ring.

Hot path
--------
``record_hit(record)`` is a closure installed on the instance (like
``RingWriter.try_write``): it encodes the record (``ormsgpack.packb``, one C
call) and, under one in-process lock, hands the bytes to the ring's
lock-free ``write_unlocked``. Every piece of state it touches is a closure
cell, so a call costs the encoder, a lock and the ring's copy, nothing
else (~1.1 us for a 450-byte authz record on the 2-core reference machine;
``python -m bench record_hit``). Threads of one process share the ring
through that lock; it is the client's own (not the ring's) because it also
guards the swap of the write function when the ring is opened, closed or
dropped after a fork.

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

Fork safety
-----------
One ``os.register_at_fork(after_in_child=...)`` hook, run by ``os.fork()``
and by anything that forks through CPython (multiprocessing's ``fork``
context, gunicorn), resets every live client in the child: a fresh lock
(another thread may have held the parent's), the inherited writer is
*abandoned* (unmapped without marking the parent's ring closed), and the
child's first ``record_hit`` (or ``start()``, or the gunicorn ``post_fork``
hook) creates the child's own ring named after its pid. The hook costs
nothing per call; a per-call ``os.getpid()`` check measured ~180-280 ns here
(glibc no longer caches the pid), a fifth of the whole call, so it is not
done. A fork that bypasses CPython's at-fork machinery (``fork()`` from C
without ``PyOS_AfterFork_Child``) is unsupported by CPython itself; even
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
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import ringbuf

from ._encode import make_encoder
from .common.log import RateLimited
from .config import CollectorConfig, ConfigError, load_config

log = logging.getLogger("collector.analytics")

State = Literal["new", "running", "stopped"]

_NEW: State = "new"
_RUNNING: State = "running"
_STOPPED: State = "stopped"

_BLOCK_FIRST_SLEEP_S = 50e-6
_BLOCK_MAX_SLEEP_S = 1e-3
_OPEN_RETRY_S = 1.0
_LOG_EVERY_S = 60.0


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


def _check_ring_sizes(cfg: CollectorConfig) -> None:
    try:
        ringbuf.check_capacity(cfg.ring_capacity_bytes, cfg.max_record_bytes)
    except ValueError as exc:
        raise ConfigError(f"ring_capacity_bytes: {exc}") from None


class _Core:
    """The state of one enabled client, held in closure cells (see module doc)."""

    def __init__(self, cfg: CollectorConfig) -> None:
        fast, slow = make_encoder(cfg.encoder)
        rings_dir = cfg.rings_dir
        capacity = cfg.ring_capacity_bytes
        max_record = cfg.max_record_bytes
        checksum = cfg.ring_checksum
        block = cfg.full_policy == "block"
        block_timeout_s = cfg.block_timeout_ms / 1000.0
        monotonic = time.monotonic
        sleep = time.sleep

        lock = threading.Lock()
        # Bound methods: acquire()/try/finally/release() costs ~80 ns less than
        # ``with lock`` here. Rebound together with ``lock`` after a fork.
        acquire, release = lock.acquire, lock.release
        state: State = _NEW
        writer: ringbuf.RingWriter | None = None
        rings_opened = 0
        dropped_after_stop = 0
        dropped_block_timeout = 0
        block_waits = 0
        dropped_no_ring = 0
        next_open_try = 0.0
        limiter = RateLimited(_LOG_EVERY_S)

        def open_ring() -> ringbuf.RingWriter:
            # Called with the lock held.
            nonlocal writer, write, state, rings_opened
            w = ringbuf.RingWriter.create(
                rings_dir, capacity_bytes=capacity, max_record_bytes=max_record,
                checksum=checksum, thread_safe=False, count_full_drops=not block,
            )
            writer = w
            write = w.write_unlocked
            state = _RUNNING
            rings_opened += 1
            log.debug("analytics ring opened path=%s pid=%d", w.path, os.getpid())
            return w

        def open_and_write(payload: bytes) -> bool:
            # The write function while no ring is open (new, or after a fork).
            nonlocal dropped_no_ring, next_open_try
            now = monotonic()
            if now < next_open_try:
                dropped_no_ring += 1
                return False
            try:
                w = open_ring()
            except (OSError, ringbuf.RingError) as exc:
                dropped_no_ring += 1
                next_open_try = now + _OPEN_RETRY_S
                if limiter.hit("open") is not None:
                    log.error("analytics ring cannot be created, records are dropped "
                              "rings_dir=%s error=%r", rings_dir, exc)
                return False
            return w.write_unlocked(payload)

        def stopped_write(payload: bytes) -> bool:
            nonlocal dropped_after_stop
            dropped_after_stop += 1
            if limiter.hit("after-stop") is not None:
                log.warning("analytics record refused after stop() pid=%d "
                            "dropped_after_stop=%d", os.getpid(), dropped_after_stop)
            return False

        write = open_and_write

        if not block:
            def record_hit(record: Mapping[str, Any]) -> bool:
                if type(record) is dict:
                    try:
                        payload = fast(record)
                    except Exception:
                        payload = slow(record)
                else:
                    payload = slow(record)
                acquire()
                try:
                    return write(payload)
                finally:
                    release()
        else:
            def record_hit(record: Mapping[str, Any]) -> bool:
                nonlocal block_waits
                if type(record) is dict:
                    try:
                        payload = fast(record)
                    except Exception:
                        payload = slow(record)
                else:
                    payload = slow(record)
                acquire()
                try:
                    if write(payload):
                        return True
                    if state is not _RUNNING:
                        return False  # stopped, or no ring: already counted
                    block_waits += 1
                finally:
                    release()
                return wait_for_room(payload)

        def wait_for_room(payload: bytes) -> bool:
            nonlocal dropped_block_timeout
            deadline = monotonic() + block_timeout_s
            delay = _BLOCK_FIRST_SLEEP_S
            while True:
                left = deadline - monotonic()
                if left <= 0:
                    break
                sleep(min(delay, left))
                delay = min(delay * 2, _BLOCK_MAX_SLEEP_S)
                with lock:
                    if state is not _RUNNING:
                        return write(payload)  # counts as after-stop / reopens
                    if write(payload):
                        return True
            with lock:
                if state is not _RUNNING or writer is None:
                    return write(payload)
                dropped_block_timeout += 1
                writer.count_drop()
            return False

        def start() -> None:
            nonlocal next_open_try
            with lock:
                if state is _RUNNING:
                    return
                next_open_try = 0.0
                open_ring()

        def ensure_ring() -> None:
            """Open the ring now unless stopped (the gunicorn post_fork hook)."""
            with lock:
                if state is _NEW:
                    open_ring()

        def stop(timeout_s: float) -> bool:
            nonlocal state, write, writer
            with lock:
                if state is _STOPPED:
                    return True
                state = _STOPPED
                write = stopped_write
                w, writer = writer, None
            if w is None:
                return True
            if w.owner_pid != os.getpid():
                # Forked without CPython's at-fork hooks: not our ring.
                w.abandon()
                return True
            drained = w.free_bytes() == w.capacity
            if not drained and timeout_s > 0:
                deadline = monotonic() + timeout_s
                delay = 1e-3
                while not drained and monotonic() < deadline:
                    sleep(min(delay, max(0.0, deadline - monotonic())))
                    delay = min(delay * 2, 0.05)
                    drained = w.free_bytes() == w.capacity
            w.close()
            return drained

        def after_fork_child() -> None:
            nonlocal lock, acquire, release, state, write, writer, rings_opened
            nonlocal dropped_after_stop, dropped_block_timeout, dropped_no_ring, block_waits
            lock = threading.Lock()
            acquire, release = lock.acquire, lock.release
            if writer is not None:
                writer.abandon()  # the parent's ring: unmap, never mark closed
                writer = None
            if state is _RUNNING:
                state = _NEW
                write = open_and_write
            rings_opened = dropped_after_stop = dropped_block_timeout = 0
            dropped_no_ring = block_waits = 0

        def stats() -> AnalyticsStats:
            with lock:
                w = writer
                return AnalyticsStats(
                    enabled=True,
                    state=state,
                    pid=os.getpid(),
                    ring_path=w.path if w is not None else None,
                    written=w.written if w is not None else 0,
                    dropped_in_ring=w.dropped if w is not None else 0,
                    block_waits=block_waits,
                    dropped_block_timeout=dropped_block_timeout,
                    dropped_after_stop=dropped_after_stop,
                    dropped_no_ring=dropped_no_ring,
                    rings_opened=rings_opened,
                )

        def current_state() -> State:
            return state

        self.record_hit = record_hit
        self.start = start
        self.ensure_ring = ensure_ring
        self.stop = stop
        self.after_fork_child = after_fork_child
        self.stats = stats
        self.state = current_state


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
        return self._core.state() if self._core is not None else _STOPPED

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
            return AnalyticsStats(False, _STOPPED, os.getpid(), None, 0, 0, 0, 0, 0, 0, 0)
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

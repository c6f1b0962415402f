"""gunicorn server hooks for :class:`collector.Analytics`.

In ``gunicorn.conf.py``::

    from collector.gunicorn import install
    install(globals())   # adds (or chains onto) post_fork, post_worker_init,
                         # worker_exit, child_exit

or name the hooks yourself::

    from collector.gunicorn import child_exit, post_fork, worker_exit

What each hook does:

``post_fork(server, worker)`` (in the new worker, right after the fork)
    For every ``Analytics`` created before the fork (``--preload`` imports the
    app in the master), open the worker's own ring now, named after the
    worker's pid, so the first request does not pay for creating it. The
    ring inherited from the master was already abandoned (unmapped, not
    closed) by the client's at-fork hook, so the worker can never write into
    the master's ring. Without ``--preload`` the app is imported after this
    hook and its client opens its ring on the first ``record_hit``.

``post_worker_init(worker)`` (in the worker, after the app was loaded)
    In a worker that serves many requests on one thread (an event loop:
    ``uvicorn.workers.UvicornWorker``, gunicorn's ``gevent``, ``eventlet``,
    ``tornado`` and ``asgi`` workers), refuse ``full_policy: block`` for
    every live client and for the config the shared middleware client will
    use (``$COLLECTOR_CONFIG``): a full ring would make ``record_hit`` sleep
    on that thread and stall every request of the worker. The worker fails
    to boot with the reason in gunicorn's log (gunicorn then stops: "Worker
    failed to boot"). ``sync`` and ``gthread`` workers may block: only the
    request's own thread waits.

``worker_exit(server, worker)`` (in the worker, as it exits)
    ``stop()`` every client: the ring is marked closed, so
    ``collector-daemon`` drains it and then removes it. (``atexit`` would do
    the same, but a worker exit is the documented place.)

``child_exit(server, worker)`` (in the master, after a worker died, for any reason)
    Leaves the dead worker's ring where it is: whatever the worker buffered
    is still in the file, and the daemon drains it once it sees the producer
    is dead (pid + start time), then removes it. The hook only logs the
    worker's rings and how many records they still hold, so an operator can
    tell a crash with pending records from a clean exit. It never touches
    the ring (the master is not its producer).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import ringbuf

from ._client import live_clients, rings_dirs
from .config import ConfigError, load_config

log = logging.getLogger("collector.gunicorn")



def _log(server: Any) -> Any:
    """gunicorn's own logger when there is one (it is configured; ours may not be)."""
    return getattr(server, "log", None) or log


def post_fork(server: Any, worker: Any) -> None:
    """In the worker: open this worker's ring for every client created before the fork."""
    for client in live_clients():
        try:
            client._ensure_ring()
        except (OSError, ringbuf.RingError) as exc:
            # Not fatal: record_hit drops (and counts) until the directory is usable.
            _log(server).error("analytics ring cannot be created in worker pid=%s error=%r",
                               getattr(worker, "pid", "?"), exc)


_EVENT_LOOP_MODULES = ("uvicorn", "uvicorn_worker", "gunicorn.workers.base_async",
                       "gunicorn.workers.ggevent", "gunicorn.workers.geventlet",
                       "gunicorn.workers.gtornado", "gunicorn.workers.gasgi")


def event_loop_worker(worker: Any) -> str | None:
    """The worker's class name when it serves many requests on one thread, else None."""
    for cls in type(worker).__mro__:
        mod = cls.__module__
        if any(mod == m or mod.startswith(m + ".") for m in _EVENT_LOOP_MODULES):
            return f"{type(worker).__module__}.{type(worker).__qualname__}"
    return None


def post_worker_init(worker: Any) -> None:
    """In the worker: refuse ``full_policy: block`` in an event-loop worker (see module doc)."""
    kind = event_loop_worker(worker)
    if kind is None:
        return
    from .integrations import refuse_block_policy

    where = f"in a {kind} worker (one event loop serves every request)"
    for client in live_clients():
        refuse_block_policy(client.config, where)
    refuse_block_policy(load_config(os.environ.get("COLLECTOR_CONFIG") or None), where)


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker: close every client's ring so the daemon drains and removes it."""
    for client in live_clients():
        try:
            client.stop()
        except Exception as exc:  # an exiting worker must not fail here
            _log(server).warning("analytics stop failed in worker pid=%s error=%r",
                        getattr(worker, "pid", "?"), exc)


def child_exit(server: Any, worker: Any) -> None:
    """In the master: report the dead worker's rings, left for the daemon to drain."""
    pid = getattr(worker, "pid", None)
    if pid is None:
        return
    for ring in worker_rings(pid):
        if ring.closed and ring.pending == 0:
            continue
        _log(server).info(
            "worker exited leaving its analytics ring for collector-daemon "
            "worker_pid=%d ring=%s pending=%d closed=%s",
            pid, ring.path, ring.pending, ring.closed,
        )


def worker_rings(pid: int, directories: list[Path] | None = None) -> list[ringbuf.RingStats]:
    """The rings in the known rings directories whose producer was ``pid``."""
    if directories is None:
        directories = rings_dirs()
        if not directories:
            try:
                directories = [Path(load_config(None).rings_dir)]
            except ConfigError:
                return []
    out: list[ringbuf.RingStats] = []
    for d in directories:
        out.extend(s for s in ringbuf.discover(d) if s.producer_pid == pid)
    return out


def _chain(first: Callable[..., None], second: Callable[..., None]) -> Callable[..., None]:
    def hook(*args: Any) -> None:  # (server, worker), or (worker) for post_worker_init
        first(*args)
        second(*args)

    hook.__name__ = getattr(second, "__name__", "hook")
    return hook


def install(namespace: MutableMapping[str, Any]) -> None:
    """Add the four hooks to a gunicorn config module's namespace (``globals()``).

    A hook the config already defines is kept and chained: ours runs first in
    ``post_fork`` and ``post_worker_init`` (so the user's hook can already
    record) and last in ``worker_exit`` (so the user's final records still get in).
    """
    ours: dict[str, Callable[..., None]] = {
        "post_fork": post_fork, "post_worker_init": post_worker_init,
        "worker_exit": worker_exit, "child_exit": child_exit}
    for name, hook in ours.items():
        theirs = namespace.get(name)
        if theirs is None or theirs is hook:
            namespace[name] = hook
        elif name == "worker_exit":
            namespace[name] = _chain(theirs, hook)
        else:
            namespace[name] = _chain(hook, theirs)

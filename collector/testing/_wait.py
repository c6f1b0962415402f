"""Waiting on a condition with a deadline, fanning out to threads, free loopback ports."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["WaitTimeout", "free_port", "in_threads", "wait_until"]


class WaitTimeout(AssertionError, TimeoutError):
    """A condition did not hold before its deadline.

    An ``AssertionError`` so that pytest reports it as a failed check, and a
    ``TimeoutError`` for code (the benchmarks) that handles timeouts.
    """


def wait_until(cond: Callable[[], T], timeout: float = 30.0, what: str = "condition",
               interval: float = 0.02) -> T:
    """Poll ``cond`` until it returns a truthy value and return that value.

    Raises :class:`WaitTimeout` naming ``what`` after ``timeout`` seconds,
    with the last exception ``cond`` raised, if any. Other exceptions from
    ``cond`` count as "not yet" (a server still starting refuses
    connections), except ``AssertionError``, which is raised at once: a
    condition asserts what must hold while waiting (the process under test
    is still alive), and waiting on would only hide it.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    last: Exception | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}"
                              + (f" (last error: {last!r})" if last else ""))
        pause.wait(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now.

    The port is released before it is returned, so another process could
    take it in between; the servers started here bind it within milliseconds.
    """
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def in_threads(target: Callable[[int], object], threads: int, timeout: float = 120.0) -> None:
    """Run ``target(k)`` for k in 0..threads-1 in threads; re-raise the first failure.

    Each thread is joined for up to ``timeout`` seconds (many clients at once
    against a server under test).
    """
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            target(k)
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout)
    if errors:
        raise errors[0]

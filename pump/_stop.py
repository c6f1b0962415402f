"""How a worker learns that it must stop: an event in tests, SIGTERM in a worker process."""

from __future__ import annotations

import os
import signal
import threading
import time

_STOP_SIGNALS = {signal.SIGTERM}


class Stopper:
    """Stop requests seen by a worker run in a thread (tests): ``request()`` from outside."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.stopped_at: float | None = None

    def request(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        if self.stopped_at is None and self._event.is_set():
            self.stopped_at = time.monotonic()
        return self.stopped_at is not None

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, returning early when a stop is requested."""
        if not self.is_set():
            self._event.wait(max(0.0, seconds))
            return self.is_set()
        threading.Event().wait(max(0.0, seconds))  # already stopping: a plain pause
        return True


class SignalStopper(Stopper):
    """Stop requests by SIGTERM in a worker process, without an async handler.

    SIGTERM is blocked and collected with ``sigpending``/``sigtimedwait``, so
    a signal never interrupts a write half way; a second SIGTERM exits at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor owns Ctrl-C
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)

    def _seen(self) -> None:
        self.count += 1
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()
        elif self.count >= 2:
            os._exit(1)

    def request(self) -> None:
        self._seen()

    def is_set(self) -> bool:
        if _STOP_SIGNALS & signal.sigpending():
            if signal.sigtimedwait(_STOP_SIGNALS, 0) is not None:
                self._seen()
        return self.stopped_at is not None

    def wait(self, seconds: float) -> bool:
        self.is_set()
        if signal.sigtimedwait(_STOP_SIGNALS, max(0.0, seconds)) is not None:
            self._seen()
        return self.stopped_at is not None

"""The shared write wrapper: per-attempt timeout, jittered backoff, one overall deadline.

Sinks only classify, by raising ``RetryableError`` or ``PermanentError``;
this module owns how often and how long to try. An exception
a sink did not classify counts as retryable (a bug must not drop data); the
delivery limit in the worker then dead-letters a batch that never succeeds.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .sinks._base import Batch, PermanentError, RetryableError, Sink, SinkError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempt_timeout_s: float
    initial_backoff_s: float
    max_backoff_s: float

    def backoff(self, attempt: int) -> float:
        """Equal jitter: half the exponential step fixed, half random."""
        step = min(self.max_backoff_s, self.initial_backoff_s * (2 ** min(attempt, 30)))
        return step / 2 + random.uniform(0, step / 2)


class WriteFailed(Exception):
    """Every attempt before the deadline failed with a retryable error."""

    def __init__(self, error: BaseException, attempts: int) -> None:
        super().__init__(f"{attempts} attempt(s) failed; last error: {error}")
        self.error = error
        self.attempts = attempts


def write_with_retries(
    sink: Sink,
    batch: Batch,
    policy: RetryPolicy,
    *,
    deadline: float | Callable[[], float],
    stop: threading.Event | None = None,
    on_attempt: Callable[[float], None] | None = None,
    on_failure: Callable[[BaseException, int], None] | None = None,
) -> int:
    """Write ``batch``; return the number of attempts it took.

    Raises :class:`PermanentError` at once when the sink says the batch can
    never succeed, and :class:`WriteFailed` when ``deadline`` passes or
    ``stop`` is set between attempts. ``deadline`` may be a callable (read
    again before each attempt: a shutdown can shorten it).
    ``on_attempt(attempt_deadline)`` runs before each attempt (the worker
    publishes it for the watchdog).
    """
    deadline_of: Callable[[], float] = deadline if callable(deadline) else (lambda: deadline)
    attempt = 0
    while True:
        now = time.monotonic()
        attempt_deadline = min(now + policy.attempt_timeout_s, deadline_of())
        if on_attempt is not None:
            on_attempt(attempt_deadline)
        attempt += 1
        try:
            sink.write(batch, deadline=attempt_deadline)
            return attempt
        except PermanentError:
            raise
        except Exception as exc:
            err: BaseException = exc
            if not isinstance(exc, SinkError):
                err = RetryableError(f"unclassified {type(exc).__name__}: {exc}")
                err.__cause__ = exc
        if on_failure is not None:
            on_failure(err, attempt)
        # A server's Retry-After (the http sink sets ``retry_after_s``) is a floor.
        pause = max(policy.backoff(attempt - 1), _retry_after_s(err))
        if time.monotonic() + pause >= deadline_of():
            raise WriteFailed(err, attempt)
        if (stop or threading.Event()).wait(pause):
            raise WriteFailed(err, attempt)


def _retry_after_s(err: BaseException) -> float:
    """How long the target asked us to wait (``retry_after_s`` on the error or on
    the exception it wraps), 0 when it did not say or said nonsense."""
    for e in (err, err.__cause__):
        value = getattr(e, "retry_after_s", None)
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except (TypeError, ValueError):
            return 0.0
    return 0.0

"""``memory``: keeps records in a list inside the worker process (tests, examples).

Knobs for tests (all in ``meta``; a test holding the instance may also change
the attributes of the same names at run time):

- ``key``: the instance is findable as ``MemorySink.instances[key]``.
- ``fail_next_n`` / ``fail_mode`` (``retryable`` | ``permanent``): the next
  N writes fail with that class of error.
- ``poison_field`` / ``poison_mode``: a batch holding a record whose
  ``poison_field`` is truthy fails every time with that class of error.
- ``delay_s``: each write takes this long (bounded by the deadline: a write
  that would pass its deadline stops there and raises RetryableError).
- ``healthy``: what ``health_check`` reports.
- ``dedupe``: keep one copy per record id (like a sink with a unique key).
"""

from __future__ import annotations

import threading
import time
from typing import ClassVar, Literal

from pydantic import Field

from ._base import (
    Batch,
    PermanentError,
    Record,
    RetryableError,
    Sink,
    SinkConfig,
    SinkError,
    Verdict,
    register,
)


class MemoryConfig(SinkConfig):
    key: str = "default"
    fail_next_n: int = Field(default=0, ge=0)
    fail_mode: Literal["retryable", "permanent"] = "retryable"
    poison_field: str | None = None
    poison_mode: Literal["retryable", "permanent"] = "permanent"
    delay_s: float = Field(default=0.0, ge=0)
    healthy: bool = True
    dedupe: bool = False


def _error(mode: str, msg: str) -> SinkError:
    return PermanentError(msg) if mode == "permanent" else RetryableError(msg)


@register
class MemorySink(Sink):
    name: ClassVar[str] = "memory"
    Config: ClassVar[type[SinkConfig]] = MemoryConfig
    instances: ClassVar[dict[str, MemorySink]] = {}

    def __init__(self, config: SinkConfig) -> None:
        super().__init__(config)
        assert isinstance(config, MemoryConfig)
        self.records: list[Record] = []
        self.ids: set[str] = set()
        self.fail_next_n = config.fail_next_n
        self.fail_mode = config.fail_mode
        self.poison_field = config.poison_field
        self.poison_mode = config.poison_mode
        self.delay_s = config.delay_s
        self.healthy = config.healthy
        self.dedupe = config.dedupe
        self.writes = 0
        self.failures = 0
        self.opened = False
        self.closed = False
        self._lock = threading.Lock()
        MemorySink.instances[config.key] = self

    @property
    def deduplicates(self) -> bool:  # type: ignore[override]
        return self.dedupe

    def open(self) -> None:
        self.opened = True

    def write(self, batch: Batch, *, deadline: float) -> Verdict:
        if self.closed:
            raise RetryableError("memory sink is closed")
        self.writes += 1
        if self.delay_s:
            left = self.time_left(deadline)
            if self.delay_s > left:
                threading.Event().wait(left)
                self.failures += 1
                raise RetryableError(f"write took longer than its deadline ({left:.3f}s)")
            threading.Event().wait(self.delay_s)
        if self.fail_next_n > 0:
            self.fail_next_n -= 1
            self.failures += 1
            raise _error(self.fail_mode, f"memory sink told to fail ({self.fail_mode})")
        if self.poison_field is not None:
            for rec in batch.records:
                if rec.data.get(self.poison_field):
                    self.failures += 1
                    raise _error(self.poison_mode, f"poison record {rec.id}")
        if time.monotonic() > deadline:
            raise RetryableError("deadline passed")
        with self._lock:
            if self.dedupe:
                for rec in batch.records:
                    if rec.id not in self.ids:
                        self.ids.add(rec.id)
                        self.records.append(rec)
            else:
                self.records.extend(batch.records)
                self.ids.update(r.id for r in batch.records)
        return Verdict.OK

    def health_check(self, *, deadline: float) -> None:
        if self.closed:
            raise RetryableError("memory sink is closed")
        if not self.healthy:
            raise RetryableError("memory sink told to be unhealthy")

    def close(self, timeout_s: float = 5.0) -> None:
        self.closed = True

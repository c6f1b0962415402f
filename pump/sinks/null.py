"""``null``: accepts every batch and keeps nothing (benchmarks, dry runs)."""

from __future__ import annotations

from typing import ClassVar

from ._base import Batch, Sink, SinkConfig, Verdict, register


class NullConfig(SinkConfig):
    """No options."""


@register
class NullSink(Sink):
    name: ClassVar[str] = "null"
    Config: ClassVar[type[SinkConfig]] = NullConfig
    deduplicates: ClassVar[bool] = True  # nothing is stored, so nothing is duplicated

    def write(self, batch: Batch, *, deadline: float) -> Verdict:
        self.time_left(deadline)  # the contract: a passed deadline is a RetryableError
        return Verdict.OK

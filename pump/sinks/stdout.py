"""``stdout`` sink: JSON Lines on standard output (or error), for debugging.

Each record is one line: its own fields as a JSON object plus its id under
``id_key``. A batch goes out in one ``write`` call; lines of several worker
processes sharing a pipe interleave only at batch boundaries when a batch
is smaller than the pipe's atomic size (4096 bytes on Linux), so give this
sink ``workers: 1`` when the output must be read by a program.

A terminal cannot deduplicate: a redelivered batch is printed again.
"""

from __future__ import annotations

import os
import sys
from typing import Literal

from pydantic import Field

from ._base import Batch, PermanentError, RetryableError, Sink, SinkConfig, Verdict, register
from ._encode import dumps, encode_each, json_line, record_object


class StdoutConfig(SinkConfig):
    """``meta`` of a ``stdout`` sink."""

    stream: Literal["stdout", "stderr"] = "stdout"
    id_key: str = Field(default="_id", min_length=1)
    pretty: bool = Field(default=False, description="indented JSON, one record per block")


@register
class StdoutSink(Sink):
    name = "stdout"
    Config = StdoutConfig
    deduplicates = False

    def __init__(self, config: StdoutConfig) -> None:  # type: ignore[override]
        super().__init__(config)
        self.cfg = config
        self._closed = False

    def _fd(self) -> int:
        stream = sys.stdout if self.cfg.stream == "stdout" else sys.stderr
        try:
            return stream.fileno()
        except (AttributeError, ValueError, OSError):
            return 1 if self.cfg.stream == "stdout" else 2

    def write(self, batch: Batch, *, deadline: float) -> Verdict:
        self.time_left(deadline)
        id_key = self.cfg.id_key
        if self.cfg.pretty:
            lines, rejected = encode_each(
                batch.records, lambda r: dumps(record_object(r, id_key), indent=True) + b"\n")
        else:
            lines, rejected = encode_each(batch.records, lambda r: json_line(r, id_key))
        if lines:
            self._out(b"".join(lines))
        if rejected:
            raise PermanentError.for_records("stdout", rejected, "written")
        return Verdict.OK

    def _out(self, data: bytes) -> None:
        stream = sys.stdout if self.cfg.stream == "stdout" else sys.stderr
        try:
            stream.flush()  # keep order with anything printed through sys.stdout
            view = memoryview(data)
            fd = self._fd()
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            raise RetryableError(f"stdout sink cannot write to {self.cfg.stream}: {exc}") from exc

    def health_check(self, *, deadline: float) -> None:
        self.time_left(deadline)
        try:
            os.fstat(self._fd())
        except OSError as exc:
            raise RetryableError(f"stdout sink: {self.cfg.stream} is closed: {exc}") from exc

    def close(self, timeout_s: float = 5.0) -> None:
        self._closed = True


"""The sink contract: what every output of ``collector-pump`` implements.

A sink is one small module in ``pump/sinks/``: a typed config class (a
pydantic model that forbids unknown keys) at the top, the sink class below,
registered by a lowercase protocol noun with :func:`register`.

::

    SinkError                    base of errors a sink raises on purpose
     +-- RetryableError          try again later (network, timeout, 5xx, 429)
     |    +-- OutageError        the target takes no record now (disk full, ...)
     +-- PermanentError          this batch will never succeed (bad data, 4xx)

The shared layer (``pump/_worker.py``) owns filtering, retries with backoff,
the overall deadline, dead-lettering and metrics; a sink only writes and
classifies. ``write`` gets an absolute ``deadline`` (``time.monotonic()``
seconds) and must pass the time left to its driver's own socket or
statement timeouts so a timeout stops the write, not only the wait.

A batch (``pump/sinks/_records.py``) holds its records as columns: a sink
reads ``batch.ids()``, ``batch.datas()`` or ``batch.raws()`` (one list each),
or ``batch.records`` (:class:`Record` objects, made when first read: what
sinks written before the columns use, unchanged). ``len(batch)`` is the
number of records.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from enum import Enum
from typing import Any, ClassVar

from collector.common.settings import Settings

from ._records import Batch, ChangedRecord, RawRecord, Record, Records


class SinkError(Exception):
    """Base of the errors sinks raise."""


class RetryableError(SinkError):
    """The write may succeed if tried again later."""


class OutageError(RetryableError):
    """The target cannot take any record now (a full disk, a missing table): an error
    every record would hit. The worker holds the batch, marks the sink unready and
    retries with backoff; it never dead-letters for it."""


class PermanentError(SinkError):
    """The write will never succeed for this batch.

    ``rejected`` maps the ids of the records the target refused to the reason
    it gave (a mapping error, a field type conflict, a message too large).
    When it is not empty the sink has written every *other* record of the
    batch, idempotently where it can, so the batch without those records
    succeeds; an empty ``rejected`` means the sink cannot tell which records
    are at fault, and the worker finds them by writing halves of the batch.
    The worker dead-letters the rejected records alone, one dead letter each.
    """

    def __init__(self, message: str, *, rejected: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.rejected: dict[str, str] = dict(rejected or {})

    @classmethod
    def for_records(cls, sink: str, rejected: Mapping[str, str], done: str) -> PermanentError:
        """The error for records the target refused, the others being ``done``."""
        rid, why = next(iter(rejected.items()))
        return cls(f"{sink} sink: {len(rejected)} record(s) rejected, the others {done}; "
                   f"first {rid}: {why}", rejected=rejected)


class Verdict(Enum):
    """What ``write`` returns when it wrote the batch. Sinks signal failure only
    by raising :class:`RetryableError` or :class:`PermanentError`."""

    OK = "ok"


class SinkConfig(Settings):
    """Base of every sink's ``meta`` config (:class:`collector.common.settings.Settings`):
    unknown keys are errors, ``renamed`` keeps old key names working, secrets
    (passwords, tokens, URLs or DSNs that may hold a password) are ``SecretStr``
    or ``SecretUrl`` and never appear in logs or errors."""


class Sink:
    """Base class of sinks. Subclasses set ``name`` and ``Config``.

    Life cycle: ``Sink(config)`` -> ``open()`` -> ``write(...)`` many times
    -> ``close(timeout_s)``. ``close`` is idempotent. A sink instance lives
    in one worker process and is used from one thread.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[SinkConfig]] = SinkConfig
    #: True when redelivering a batch cannot create duplicates in the target.
    deduplicates: ClassVar[bool] = False
    #: True when the sink writes ``raws()`` / ``Record.raw`` and never reads ``data``: with no
    #: filters, omit-detail or trimming, its records are not decoded at all.
    forwards_bytes: ClassVar[bool] = False
    #: Modules the sink imports when it opens (its driver), and the ``collector[...]``
    #: extra that installs them; the pump refuses to start without them.
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None

    def __init__(self, config: SinkConfig) -> None:
        self.config = config

    def open(self) -> None:
        """Connect; raise RetryableError if the target is not reachable yet."""

    def write(self, batch: Batch, *, deadline: float) -> Verdict:
        """Write every record of ``batch`` before ``deadline`` (monotonic seconds).

        Read only the columns the target needs (``batch.ids()``, ``datas()``,
        ``raws()``); ``batch.records`` makes an object per record.

        Returns ``Verdict.OK`` (or None) once written; raises a :class:`SinkError`
        otherwise."""
        raise NotImplementedError

    def encode(self, records: Records) -> list[Any] | None:
        """Optional: encode one stream entry's records for the target.

        A sink that defines it is called by the worker with each entry's records
        right after they are decoded (filtered, trimmed), while the decoded fields
        are still in the CPU's caches; what it returns, one item per record in
        order, is kept as ``records.encoded`` and ``write`` reads it with
        ``batch.encoded()`` (parts of a batch and retries reuse it: it must depend
        on the records alone). Return None to leave an entry to ``write``. A
        sink's ``encode`` must not raise. Once an entry's records are encoded
        and none was changed by the pump, their decoded fields are let go (read
        again, they are decoded from the bytes).
        """
        return None

    def health_check(self, *, deadline: float) -> None:
        """Raise a SinkError if a write would fail now; no side effects."""

    def close(self, timeout_s: float = 5.0) -> None:
        """Release connections and files. Idempotent."""

    # helpers for subclasses
    @staticmethod
    def time_left(deadline: float, minimum: float = 0.001) -> float:
        """Seconds until ``deadline``; raises RetryableError once it has passed."""
        left = deadline - time.monotonic()
        if left < minimum:
            raise RetryableError("deadline passed before the write could start")
        return left


_REGISTRY: dict[str, type[Sink]] = {}


def register(cls: type[Sink]) -> type[Sink]:
    """Class decorator: make a sink available under ``cls.name``."""
    if not cls.name or cls.name != cls.name.lower():
        raise ValueError(f"sink {cls.__qualname__} needs a lowercase name")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"sink type {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


__all__ = [
    "Batch",
    "ChangedRecord",
    "OutageError",
    "PermanentError",
    "RawRecord",
    "Record",
    "Records",
    "RetryableError",
    "Sink",
    "SinkConfig",
    "SinkError",
    "Verdict",
    "register",
]

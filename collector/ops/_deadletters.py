"""``collector dead-letters list|show|replay|purge --sink NAME``.

A sink's dead letters are the entries of its dead-letter stream on every
shard, ``<shard>:dead:<sink>`` (the format: ``pump/_deadletter.py``). ``--since``
(``30m``, ``2h``, ``1d`` or an ISO 8601 time) and ``--limit`` select by the
dead letter's own stream id (when it was written), ``--id`` one of them.

Replay puts a dead letter back for that sink's group only: one ``MULTI``
adds its entry (the original fields, without the ``dl_*`` ones) to the shard
with ``replay_for: <sink>`` and deletes the dead letter. Every other group
acknowledges an entry whose ``replay_for`` names another sink without
writing it (``pump/_pipeline.py``), so the other sinks are unaffected. Being
one transaction per dead letter, a replay interrupted and run again replays
each dead letter once: the ones it did are gone from the dead-letter stream.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from collector.common.stream import REPLAY_FOR
from pump._deadletter import DL_FIELDS, dead_letter_key

__all__ = ["DeadLetter", "parse_since", "purge", "replay", "select"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> int:
    """Unix ms from ``30s``/``10m``/``2h``/``1d`` ago or an ISO 8601 time (UTC if naive)."""
    now = time.time() if now is None else now
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if m:
        return int((now - float(m.group(1)) * _UNITS[m.group(2)]) * 1000)
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: give 30s, 10m, 2h, 1d or an ISO 8601 time") from None
    if dt.tzinfo is None:
        from datetime import UTC
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


@dataclass
class DeadLetter:
    """One dead letter: where it is, its id and its fields (bytes keys as Redis gives them)."""

    key: str
    id: str
    fields: dict[bytes, bytes]

    def get(self, name: str) -> str:
        return _s(self.fields.get(name.encode(), b""))

    @property
    def written_ms(self) -> int:
        return int(self.id.split("-", 1)[0])

    def entry_fields(self) -> dict[bytes, bytes]:
        """The stream entry it holds, without the dead letter's own fields."""
        drop = {f.encode() for f in DL_FIELDS} | {REPLAY_FOR.encode()}
        return {k: v for k, v in self.fields.items() if k not in drop}

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "stream": self.key, "sink": self.get("dl_sink"),
                "reason": self.get("dl_reason"), "error": self.get("dl_error"),
                "record_id": self.get("dl_record_id"), "entry_id": self.get("dl_entry_id"),
                "source_stream": self.get("dl_stream"),
                "deliveries": int(self.get("dl_deliveries") or 0),
                "first_failure_ms": int(self.get("dl_first_failure_ms") or 0),
                "last_failure_ms": int(self.get("dl_last_failure_ms") or 0),
                "age_s": round(max(0.0, time.time() - self.written_ms / 1000), 3)}


def select(r: redis.Redis, shard_keys: Sequence[str], sink: str, *, since_ms: int | None = None,
           limit: int | None = None, ids: Sequence[str] = ()) -> Iterator[DeadLetter]:
    """The sink's dead letters on every shard, oldest first per shard (paged XRANGE)."""
    left = limit
    for shard in shard_keys:
        key = dead_letter_key(shard, sink)
        if ids:
            for i in ids:
                got = r.xrange(key, min=i, max=i)
                for eid, fields in got:
                    yield DeadLetter(key, _s(eid), fields)
            continue
        start = f"{since_ms}-0" if since_ms is not None else "-"
        while left is None or left > 0:
            page = r.xrange(key, min=start, max="+", count=min(500, left or 500))
            if not page:
                break
            for eid, fields in page:
                yield DeadLetter(key, _s(eid), fields)
                if left is not None:
                    left -= 1
            start = f"({_s(page[-1][0])}"


def count(r: redis.Redis, shard_keys: Sequence[str], sink: str) -> int:
    return sum(int(r.xlen(dead_letter_key(k, sink))) for k in shard_keys)


class _Progress:
    """A rich progress bar that shows itself only once the work has taken over a second."""

    def __init__(self, what: str, total: int) -> None:
        self.t0 = time.monotonic()
        self.bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), transient=False)
        self.task = self.bar.add_task(what, total=total)
        self.shown = False

    def advance(self) -> None:
        self.bar.advance(self.task)
        if not self.shown and time.monotonic() - self.t0 > 1.0:
            self.bar.start()
            self.shown = True

    def close(self) -> None:
        if self.shown:
            self.bar.stop()


def replay(r: redis.Redis, letters: Sequence[DeadLetter], sink: str,
           on_each: Callable[[], None] | None = None) -> int:
    """Put each dead letter back for ``sink``'s group only; returns how many were replayed.

    One MULTI per dead letter: XADD of its entry with ``replay_for`` to the shard
    it was read from, XDEL of the dead letter. A dead letter already gone (replayed
    or purged meanwhile) is skipped.
    """
    done = 0
    progress = _Progress(f"replaying to {sink}", len(letters))
    try:
        for dl in letters:
            shard = dl.get("dl_stream") or dl.key.rsplit(":dead:", 1)[0]
            fields = dl.entry_fields()
            fields[REPLAY_FOR.encode()] = sink.encode()

            def txn(pipe: redis.client.Pipeline, dl: DeadLetter = dl, shard: str = shard,
                    fields: dict[bytes, bytes] = fields) -> None:
                if not pipe.xrange(dl.key, min=dl.id, max=dl.id):
                    pipe.multi()
                    return  # gone meanwhile: nothing to replay
                pipe.multi()
                pipe.xadd(shard, fields)  # type: ignore[arg-type]
                pipe.xdel(dl.key, dl.id)

            res = r.transaction(txn, dl.key)
            if res:
                done += 1
            progress.advance()
            if on_each is not None:
                on_each()
    finally:
        progress.close()
    return done


def purge(r: redis.Redis, letters: Sequence[DeadLetter]) -> int:
    """XDEL the given dead letters; returns how many were deleted."""
    done = 0
    progress = _Progress("purging", len(letters))
    try:
        for dl in letters:
            done += int(r.xdel(dl.key, dl.id))
            progress.advance()
    finally:
        progress.close()
    return done


def decoded(dl: DeadLetter) -> dict[str, Any]:
    """The dead letter for a person: its summary and its records decoded (JSON-ready)."""
    from collector.common.stream import BadEntry, decode_entry
    from pump.sinks._values import UndecodableRecord, unpack_record

    out = dl.summary()
    fields = dl.entry_fields()
    try:
        entry = decode_entry(fields)
    except BadEntry as exc:
        out["entry"] = {"error": str(exc),
                        "fields": {_s(k): _s(v)[:200] for k, v in fields.items()}}
        return out
    records = []
    for rid, raw in zip(entry.ids(), entry.records, strict=True):
        try:
            records.append({"id": rid, "record": unpack_record(raw)})
        except UndecodableRecord as exc:
            records.append({"id": rid, "error": str(exc), "bytes": raw[:200].hex()})
    out["entry"] = {"ring": entry.ring, "first_seq": entry.first_seq, "fmt": entry.fmt,
                    "records": records}
    return out

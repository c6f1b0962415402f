"""The ring against a model: a hypothesis state machine.

The model is a deque of (seq, payload, end position) plus the byte
positions the layout defines (see ``ringbuf._layout``). ``try_write`` must
return False exactly when the layout's room rule says there is no room:
a frame takes ``16 + align8(len(payload))`` bytes, and a frame that does not
fit before the end of the data area also takes the rest of the area
(padding), so it fits iff ``tail - head + need <= capacity`` where ``need``
includes that padding. Payload sizes run from 0 to ``max_record_bytes`` in a
4 KiB ring, so wrap-around, padding of 8 bytes and a full ring all happen.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque

import msgpack
import ormsgpack
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import ringbuf
from collector.common.stream import array_header
from ringbuf import _native

CAPACITY = 4096
MAX_RECORD = 1000

sizes = st.one_of(
    st.integers(0, MAX_RECORD),
    st.sampled_from([0, 1, 7, 8, 9, 15, 16, 17, MAX_RECORD - 1, MAX_RECORD]),
)


def _frame(n: int) -> int:
    return 16 + ((n + 7) & ~7)


class RingModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="ringmodel-")
        os.chmod(self.dir, 0o700)
        self.writer: ringbuf.RingWriter | None = None
        self.reader: ringbuf.RingReader | None = None
        # Model state.
        self.pending: deque[tuple[int, bytes, int]] = deque()  # (seq, payload, end pos)
        self.read_idx = 0  # how many of ``pending`` the reader has read
        self.tail = 0
        self.head = 0
        self.seq = 0
        self.committed = 0
        self.dropped_full = 0
        self.dropped_oversize = 0

    @initialize(checksum=st.booleans(), thread_safe=st.booleans(), native=st.booleans(),
                native_scan=st.booleans())
    def create(self, checksum: bool, thread_safe: bool, native: bool, native_scan: bool) -> None:
        # both paths (a unittest-style machine takes no fixture): native when built
        native = native and not checksum and _native.BUILT
        event("native path" if native else "pure path")
        self.writer = ringbuf.RingWriter.create(
            self.dir, capacity_bytes=CAPACITY, max_record_bytes=MAX_RECORD,
            checksum=checksum, thread_safe=thread_safe, native=native)
        self.native_scan = native_scan
        self.reader = self._open_reader()

    def _open_reader(self) -> ringbuf.RingReader:
        """A reader whose read_packed takes the native scanner (when built and drawn)
        or the pure one (ringbuf._scan.pack_bins)."""
        assert self.writer is not None
        r = ringbuf.RingReader.open(self.writer.path)
        if not self.native_scan:
            r._scan_packed = None
        event("read_packed: native scanner" if r._scan_packed is not None
              else "read_packed: pure scanner")
        return r

    def teardown(self) -> None:
        if self.reader is not None:
            self.reader.close()
        if self.writer is not None:
            self.writer.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the room rule, from the layout ------------------------------------
    def _room(self, n: int) -> tuple[bool, int]:
        frame = _frame(n)
        off = self.tail % CAPACITY
        need = frame if off + frame <= CAPACITY else frame + CAPACITY - off
        return self.tail - self.head + need <= CAPACITY, need

    @rule(n=sizes, unlocked=st.booleans(), as_bytearray=st.booleans())
    def write(self, n: int, unlocked: bool, as_bytearray: bool) -> None:
        assert self.writer is not None
        payload = bytes((self.seq * 7 + i) & 0xFF for i in range(n))
        fits, need = self._room(n)
        arg = bytearray(payload) if as_bytearray else payload
        fn = self.writer.write_unlocked if unlocked else self.writer.try_write
        assert fn(arg) is fits
        event("write: ring full" if not fits else
              "write: padded to the end" if need > _frame(n) else "write: fits")
        if fits:
            self.tail += need
            self.pending.append((self.seq, payload, self.tail))
            self.seq += 1
        else:
            self.dropped_full += 1

    @rule(n=sizes)
    def write_record(self, n: int) -> None:
        """A dict record, as the client writes it: native when taken, else encoded."""
        assert self.writer is not None
        record = {"p": bytes((self.seq * 7 + i) & 0xFF for i in range(max(0, n - 8)))}
        payload = ormsgpack.packb(record)
        fits, need = self._room(len(payload))
        done = self.writer.write_record(record)
        event("write_record: " + ("native" if done is not None else "careful"))
        if done is None:
            done = self.writer.write_unlocked(payload)
        assert done is fits
        if fits:
            self.tail += need
            self.pending.append((self.seq, payload, self.tail))
            self.seq += 1
        else:
            self.dropped_full += 1

    @rule(ns=st.lists(sizes, min_size=1, max_size=8))
    def write_burst(self, ns: list[int]) -> None:
        for n in ns:
            self.write(n, unlocked=False, as_bytearray=False)

    @rule(slack=st.sampled_from([0, 0, 1, 7, 8]))
    def fill_to_the_brim(self, slack: int) -> None:
        """Write the record that leaves exactly 0 (or a few) bytes free, then one more."""
        free = CAPACITY - (self.tail - self.head)
        contiguous = CAPACITY - self.tail % CAPACITY
        n = min(free, contiguous) - 16 - slack
        if 0 <= n <= MAX_RECORD:
            self.write(n, unlocked=False, as_bytearray=False)
            self.write(0, unlocked=True, as_bytearray=False)

    @rule(extra=st.integers(1, 5000))
    def write_oversize(self, extra: int) -> None:
        assert self.writer is not None
        with pytest.raises(ringbuf.RecordTooLarge) as info:
            self.writer.try_write(b"x" * (MAX_RECORD + extra))
        assert str(MAX_RECORD + extra) in str(info.value)
        assert str(MAX_RECORD) in str(info.value)
        self.dropped_oversize += 1

    @rule(packed=st.booleans())
    def read_all_and_commit(self, packed: bool) -> None:
        self.read(10_000, None, packed)
        self.commit()

    @rule(max_records=st.integers(1, 40),
          max_bytes=st.one_of(st.none(), st.integers(0, 3 * MAX_RECORD)),
          packed=st.booleans())
    def read(self, max_records: int, max_bytes: int | None, packed: bool) -> None:
        assert self.reader is not None
        if packed:
            # the flusher's read: the records as msgpack bins, one byte string per segment
            p = self.reader.read_packed(max_records, max_bytes)
            recs = msgpack.unpackb(array_header(p.n) + b"".join(p.parts))
            batch = ringbuf.RecordBatch(recs, p.first_seq, p.nbytes)
            assert len(recs) == p.n == len(p)
            assert len(p.parts) <= 2  # one per contiguous segment: at most one wrap
        else:
            batch = self.reader.read_batch(max_records, max_bytes)
        expect: list[bytes] = []
        nbytes = 0
        first = self.pending[self.read_idx][0] if self.read_idx < len(self.pending) else None
        for _seq, payload, _end in list(self.pending)[self.read_idx:]:
            if len(expect) == max_records:
                break
            if max_bytes is not None and expect and nbytes + len(payload) > max_bytes:
                break
            expect.append(payload)
            nbytes += len(payload)
        assert list(batch) == expect
        assert batch.nbytes == nbytes
        if expect:
            assert batch.first_seq == first
        self.read_idx += len(expect)

    @rule()
    def commit(self) -> None:
        assert self.reader is not None
        self.reader.commit()
        if self.read_idx:
            self.head = self.pending[self.read_idx - 1][2]
            self.committed = self.pending[self.read_idx - 1][0] + 1
            for _ in range(self.read_idx):
                self.pending.popleft()
            self.read_idx = 0

    @rule()
    def rollback(self) -> None:
        assert self.reader is not None
        self.reader.rollback()
        self.read_idx = 0

    @precondition(lambda self: self.reader is not None)
    @rule()
    def reopen_reader(self) -> None:
        """A new reader (as after a consumer restart) starts at the committed head."""
        assert self.reader is not None and self.writer is not None
        self.reader.close()
        self.reader = self._open_reader()
        self.read_idx = 0

    @invariant()
    def header_matches_model(self) -> None:
        if self.reader is None:
            return
        s = self.reader.stats()
        assert s.written == self.seq
        assert s.committed == self.committed
        assert s.dropped_full == self.dropped_full
        assert s.dropped_oversize == self.dropped_oversize
        assert s.bytes_used == self.tail - self.head
        assert s.producer_alive
        assert not s.closed


RingModel.TestCase.settings = settings(
    max_examples=120, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestRingModel = RingModel.TestCase

"""Rings between real processes: many producers, kill -9 of a producer or a reader.

Run as a script, this file is the child process the tests start::

    python tests/test_ring_processes.py producer DIR NAME INDEX COUNT
    python tests/test_ring_processes.py reader DIR NRINGS TOTAL
    python tests/test_ring_processes.py burst DIR NAME REPORT_FILE
    python tests/test_ring_processes.py peek RING_PATH COMMIT_FIRST

Every payload is ``struct "<II" (producer, seq)`` followed by filler bytes
that are a function of (producer, seq) and of varying length, so a torn or
misplaced frame is caught by comparing the payload with the one expected.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # started as a child process: make ``ringbuf`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest

import ringbuf

if __name__ != "__main__":  # the children take the path from the environment they get
    from ._rings import write_path  # noqa: F401 (both paths)

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
ID = struct.Struct("<II")


def payload(producer: int, seq: int) -> bytes:
    """The record a producer writes as its ``seq``-th: 8 to 47 bytes."""
    return ID.pack(producer, seq) + bytes([(producer * 31 + seq) & 0xFF]) * (seq % 40)


# -- child processes ----------------------------------------------------------

def run_producer(directory: str, name: str, index: int, count: int) -> int:
    w = ringbuf.RingWriter.create(directory, capacity_bytes=1 << 16, name=name,
                                  max_record_bytes=256, count_full_drops=False)
    write = w.try_write
    retries = 0
    for seq in range(count):
        p = payload(index, seq)
        while not write(p):
            retries += 1
            os.sched_yield()
    w.close()
    print(json.dumps({"producer": index, "written": count, "retries": retries}), flush=True)
    return 0


def run_reader(directory: str, nrings: int, total: int) -> int:
    """Drain ``nrings`` rings round-robin until every producer closed its ring."""
    deadline = time.monotonic() + 120
    while len(ringbuf.discover(directory)) < nrings:
        if time.monotonic() > deadline:
            raise SystemExit("reader: the producers' rings never appeared")
        time.sleep(0.005)
    readers = [ringbuf.RingReader.open(s.path) for s in ringbuf.discover(directory)]
    expected: dict[int, int] = {}  # producer -> next seq expected
    lost = duplicated = corrupted = out_of_order = 0
    received = 0
    unpack = ID.unpack_from
    live = list(readers)
    while live:
        if time.monotonic() > deadline:
            raise SystemExit(f"reader: timed out with {received} of {total} records")
        idle = True
        for r in list(live):
            batch = r.read_batch(2048)
            if not batch:
                if r.stats().closed and r.is_empty():
                    live.remove(r)
                continue
            idle = False
            ring_seq = batch.first_seq
            for rec in batch:
                producer, seq = unpack(rec)
                if rec != payload(producer, seq) or seq != ring_seq:
                    corrupted += 1
                want = expected.get(producer, 0)
                if seq == want:
                    expected[producer] = seq + 1
                elif seq < want:
                    duplicated += 1
                else:
                    lost += seq - want
                    out_of_order += 1
                    expected[producer] = seq + 1
                ring_seq += 1
            received += len(batch)
            r.commit()
        if idle:
            os.sched_yield()
    lost += total - sum(expected.values())
    print(json.dumps({"received": received, "lost": lost, "duplicated": duplicated,
                      "corrupted": corrupted, "out_of_order": out_of_order,
                      "per_producer": expected}), flush=True)
    return 0


def run_burst(directory: str, name: str, report: str) -> int:
    """Write forever; append each seq to ``report`` only after try_write returned True."""
    w = ringbuf.RingWriter.create(directory, capacity_bytes=1 << 14, name=name,
                                  max_record_bytes=256)
    fd = os.open(report, os.O_WRONLY | os.O_APPEND)
    pack = struct.Struct("<Q").pack
    seq = 0
    while True:
        if w.try_write(payload(7, seq)):
            os.write(fd, pack(seq))
            seq += 1


def run_peek(path: str, commit_first: str) -> int:
    """Read a batch (committing one first if asked), print it, then wait to be killed."""
    r = ringbuf.RingReader.open(path)
    if commit_first == "1":
        r.read_batch(10)
        r.commit()
    batch = r.read_batch(25)
    print(json.dumps({"first_seq": batch.first_seq, "records": [b.hex() for b in batch]}),
          flush=True)
    sys.stdin.read()  # the test kills us before we get past this
    r.commit()  # pragma: no cover - never reached
    return 0


# -- the tests ---------------------------------------------------------------

def _child(*args: object, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(HERE), *map(str, args)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT, **kw)  # type: ignore[call-overload]


def test_four_producers_one_reader_a_million_records(rings_dir: Path) -> None:
    """4 producer processes, 1 reader process draining all rings: 0 lost, dup, corrupt."""
    producers, per_producer = 4, 250_000
    total = producers * per_producer
    reader = _child("reader", rings_dir, producers, total)
    procs = [_child("producer", rings_dir, f"p{i}.ring", i, per_producer)
             for i in range(producers)]
    try:
        outs = [json.loads(p.communicate(timeout=240)[0]) for p in procs]
        result = json.loads(reader.communicate(timeout=240)[0])
    finally:
        for p in [*procs, reader]:
            if p.poll() is None:
                p.kill()
                p.wait()
    retries = sum(o["retries"] for o in outs)
    print(f"\n{producers} producers x {per_producer} records -> 1 reader: "
          f"received={result['received']} lost={result['lost']} "
          f"duplicated={result['duplicated']} corrupted={result['corrupted']} "
          f"out_of_order={result['out_of_order']} producer retries on a full ring={retries}")
    assert all(p.returncode == 0 for p in procs) and reader.returncode == 0
    assert result["received"] == total
    assert (result["lost"], result["duplicated"], result["corrupted"],
            result["out_of_order"]) == (0, 0, 0, 0)
    assert result["per_producer"] == {str(i): per_producer for i in range(producers)}
    for s in ringbuf.discover(rings_dir):
        assert s.written == s.committed == per_producer
        assert s.dropped == 0 and s.closed and not s.producer_alive


@pytest.mark.parametrize("read_before_kill", [5_000, 30_000, 60_000])
def test_producer_killed_mid_burst(rings_dir: Path, tmp_path: Path,
                                   read_before_kill: int) -> None:
    """kill -9 of a producer while it writes: what it published is read exactly once.

    The producer appends a record's seq to a report file only after
    try_write returned True, so the kill can fall between a record's
    publication and its report: the records read must be exactly
    ``0 .. N-1`` (in order, each once, each payload intact) with ``N`` the
    number reported or one more, and the header's ``written`` counter (stored
    just after ``tail``) is ``N`` or, if the kill fell between those two
    stores, ``N - 1``.
    """
    report = tmp_path / "report"
    report.touch()
    proc = subprocess.Popen([sys.executable, str(HERE), "burst", str(rings_dir), "b.ring",
                             str(report)], cwd=ROOT)
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while not (rings_dir / "b.ring").exists():
            assert time.monotonic() < deadline, "the producer never created its ring"
            time.sleep(0.005)
        reader = ringbuf.RingReader.open(rings_dir / "b.ring")
        assert reader.stats().producer_alive
        # Read while it writes; the ring (16 KiB) fills and wraps many times.
        while len(got) < read_before_kill:
            assert time.monotonic() < deadline, "the producer stalled"
            got.extend(reader.read_batch(500))
            reader.commit()
        proc.send_signal(signal.SIGKILL)  # in the middle of its endless burst
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    while batch := reader.read_batch(1000):
        got.extend(batch)
        reader.commit()
    stats = reader.stats()
    reported = struct.unpack(f"<{report.stat().st_size // 8}Q", report.read_bytes())
    n = len(got)
    torn = [i for i, rec in enumerate(got) if rec != payload(7, i)]
    print(f"\nkilled producer: read {n} records, {len(reported)} reported, "
          f"written header={stats.written}, torn={len(torn)}")
    assert torn == []  # records 0..n-1 in order, each once, intact
    assert list(reported) == list(range(len(reported)))
    assert len(reported) <= n <= len(reported) + 1
    assert stats.written in (n, n - 1)
    assert stats.committed == n
    assert not stats.producer_alive
    assert not stats.closed


def test_reader_killed_before_commit_next_reader_gets_same_records(rings_dir: Path) -> None:
    w = ringbuf.RingWriter.create(rings_dir, capacity_bytes=1 << 16, max_record_bytes=256)
    sent = [payload(3, i) for i in range(100)]
    for p in sent:
        assert w.try_write(p)
    for commit_first in (False, True):
        proc = _child("peek", w.path, int(commit_first), stdin=subprocess.PIPE)
        try:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            seen = json.loads(line)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        start = 10 if commit_first else 0
        assert seen["first_seq"] == start
        assert [bytes.fromhex(h) for h in seen["records"]] == sent[start:start + 25]
        # The next reader gets the same records: the killed one never committed them.
        with ringbuf.RingReader.open(w.path) as r:
            batch = r.read_batch(25)
            assert batch.first_seq == start
            assert list(batch) == sent[start:start + 25]
            assert r.stats().committed == start
    with ringbuf.RingReader.open(w.path) as r:
        assert list(r.read_batch(1000)) == sent[10:]
    w.close()


if __name__ == "__main__":
    role, *rest = sys.argv[1:]
    if role == "producer":
        sys.exit(run_producer(rest[0], rest[1], int(rest[2]), int(rest[3])))
    if role == "reader":
        sys.exit(run_reader(rest[0], int(rest[1]), int(rest[2])))
    if role == "burst":
        sys.exit(run_burst(*rest))
    if role == "peek":
        sys.exit(run_peek(*rest))
    sys.exit(f"unknown role {role!r}")


@pytest.mark.parametrize("exit_as", ["closed", "killed"])
def test_stats_never_show_a_finished_producer_with_an_unread_last_record(
        rings_dir: Path, monkeypatch: pytest.MonkeyPatch, exit_as: str) -> None:
    """The daemon removes a ring once its stats say the producer is closed or dead and
    everything is committed. A producer that writes its last record and exits while
    the stats are being read must not make them say so: the liveness check is where
    that interleaving is forced here (it writes the record and, for ``closed``, closes
    the ring, as a stop() right after a last record_hit would)."""
    w = ringbuf.RingWriter.create(rings_dir, capacity_bytes=1 << 16, max_record_bytes=256)
    r = ringbuf.RingReader.open(w.path)

    def last_record_then_exit(fd: int, pid: int, start_time: float) -> bool:
        assert w.try_write(payload(0, 0))
        if exit_as == "closed":
            w.close()
            return True
        w.abandon()
        return False

    monkeypatch.setattr(ringbuf._probe, "producer_alive", last_record_then_exit)
    st = r.stats()
    finished = st.closed or not st.producer_alive
    assert not (finished and st.bytes_used == 0 and st.pending == 0), st
    monkeypatch.undo()
    assert list(r.read_batch(10)) == [payload(0, 0)]
    r.close()
    w.close()

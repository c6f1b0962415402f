"""collector.Analytics across forks and threads: every process its own ring, nothing lost.

Records are read back from the ring files with ringbuf.RingReader (the
daemon's side) and decoded with plain ``msgpack.unpackb``.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import msgpack

import ringbuf
from collector import Analytics
from collector.testing import wait_until

from ._rings import (
    AUTHZ,
    check_sequence,
    drain,
    rings,
    small,
    write_path,  # noqa: F401 (both paths)
)

# -- forks ---------------------------------------------------------------------

def _child_writes(a: Analytics, n: int) -> int:
    """In a forked child: write n records, close, return how it went as an exit code."""
    ok = all(a.record_hit({"pid": os.getpid(), "seq": i}) for i in range(n))
    path = a.ring_path
    good = ok and path is not None and Path(path).name.startswith(f"{os.getpid()}-")
    a.stop()
    return 0 if good else 3


def test_fork_child_gets_its_own_ring(rings_dir: Path) -> None:
    a = Analytics(small(rings_dir)).start()
    for i in range(5):
        a.record_hit({"pid": os.getpid(), "seq": i})
    parent_ring = a.ring_path
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 4
        try:
            code = _child_writes(a, 50)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    for i in range(5, 10):
        assert a.record_hit({"pid": os.getpid(), "seq": i})
    files = rings(rings_dir)
    assert len(files) == 2
    child_ring = next(p for p in files if str(p) != parent_ring)
    assert child_ring.name.startswith(f"{pid}-")
    child = drain(str(child_ring))
    assert child == [{"pid": pid, "seq": i} for i in range(50)]
    with ringbuf.RingReader.open(child_ring) as r:
        assert r.stats().closed and r.stats().producer_pid == pid
    parent = drain(parent_ring)  # type: ignore[arg-type]
    assert parent == [{"pid": os.getpid(), "seq": i} for i in range(10)]  # untouched by the child
    with ringbuf.RingReader.open(parent_ring) as r:  # type: ignore[arg-type]
        assert not r.stats().closed  # the child abandoned it, did not close it
    a.stop()


def _reaped(pid: int) -> tuple[int, int] | None:
    got = os.waitpid(pid, os.WNOHANG)
    return got if got[0] else None


def test_fork_while_another_thread_records(rings_dir: Path) -> None:
    """The child must not inherit a lock held by a parent thread (no deadlock)."""
    a = Analytics(small(rings_dir)).start()
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            a.record_hit(AUTHZ)  # a full ring drops: fine, it only keeps the lock busy

    t = threading.Thread(target=busy)
    t.start()
    pids = []
    try:
        for _ in range(5):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                code = 4
                try:
                    code = _child_writes(a, 20)
                finally:
                    os._exit(code)
            pids.append(pid)
    finally:
        stop.set()
        t.join(30)
    for pid in pids:
        done = wait_until(lambda p=pid: _reaped(p), 30, f"forked child {pid} to exit")
        assert os.waitstatus_to_exitcode(done[1]) == 0
        child_ring = next(rings_dir.glob(f"{pid}-*.ring"))
        assert [r["seq"] for r in drain(str(child_ring))] == list(range(20))
    a.stop()


def _mp_child(a: Analytics, n: int, q: Any) -> None:
    q.put((os.getpid(), _child_writes(a, n), a.stats().dropped_after_stop))


def test_fork_with_multiprocessing_fork_context(rings_dir: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    a = Analytics(small(rings_dir)).start()
    a.record_hit({"pid": os.getpid(), "seq": 0})
    parent_ring = a.ring_path
    q = ctx.Queue()
    procs = [ctx.Process(target=_mp_child, args=(a, 30, q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert all(code == 0 for _, code, _ in results)
    child_pids = {pid for pid, _, _ in results}
    by_pid: dict[int, list[Any]] = {}
    for path in rings(rings_dir):
        if str(path) != parent_ring:
            with ringbuf.RingReader.open(path) as r:
                by_pid[r.producer_pid] = drain(str(path))
    assert set(by_pid) == child_pids
    for pid, recs in by_pid.items():
        assert recs == [{"pid": pid, "seq": i} for i in range(30)]
    assert drain(parent_ring) == [{"pid": os.getpid(), "seq": 0}]  # type: ignore[arg-type]
    a.stop()


# -- threads -------------------------------------------------------------------

def test_threads_share_the_ring_without_loss(rings_dir: Path) -> None:
    threads_n, per_thread = 8, 20_000
    a = Analytics({"rings_dir": str(rings_dir), "ring_capacity_bytes": 1 << 20,
                   "full_policy": "block", "block_timeout_ms": 30_000}).start()
    reader = ringbuf.RingReader.open(a.ring_path)  # type: ignore[arg-type]
    got: list[tuple[int, int]] = []
    corrupt = 0
    done = threading.Event()

    def consume() -> None:
        nonlocal corrupt
        while True:
            finished = done.is_set()
            batch = reader.read_batch(4096)
            for raw in batch:
                try:
                    rec = msgpack.unpackb(raw)
                    got.append((rec["t"], rec["seq"]))
                except Exception:
                    corrupt += 1
            reader.commit()
            if finished and not batch:
                return
            if not batch:
                done.wait(0.001)

    def produce(t: int) -> None:
        for i in range(per_thread):
            if not a.record_hit({"t": t, "seq": i, "pad": "x" * 40}):
                raise AssertionError(f"thread {t} record {i} was dropped")

    consumer = threading.Thread(target=consume)
    consumer.start()
    producers = [threading.Thread(target=produce, args=(t,)) for t in range(threads_n)]
    for p in producers:
        p.start()
    for p in producers:
        p.join(120)
    done.set()
    consumer.join(60)
    reader.close()
    a.stop()
    assert corrupt == 0
    flat = [t * per_thread + s for t, s in got]
    check_sequence(flat, threads_n * per_thread)
    for t in range(threads_n):  # each thread's records stay in its order
        seqs = [s for tt, s in got if tt == t]
        assert seqs == sorted(seqs)

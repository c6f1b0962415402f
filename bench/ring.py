"""``python -m bench ring [--quick]``: what the shared-memory ring costs, and the alternatives.

Printed in one run (nothing is asserted; the targets are printed beside the
figures):

1. ns per ``RingWriter.try_write`` of a ~450-byte msgpack record, p50/p99,
   without and with the in-process lock, while a reader process drains the
   ring. Writes are timed in groups of 100 (a single call is too short for
   the timer); the p50/p99 are over the groups' per-write means. The cost of
   the timing loop itself (a no-op function call) is measured the same way
   and subtracted for the "ring's own cost".
2. ns per encode + write with ``msgpack.packb``, a reused
   ``msgpack.Packer().pack`` and ``ormsgpack.packb`` (through a lambda, so
   one extra call is included), and each encoder alone.
3. The producer process's CPU per record, ``time.process_time()`` over N
   records including everything the process does in other threads until
   every record left it, with a consumer process draining: the ring (retrying
   on a full ring), ``multiprocessing.Queue.put`` (the time until its feeder
   thread flushed everything, ``close(); join_thread()``, included) and
   ``faster_fifo.Queue.put``; all put the same encoded bytes. The ring's
   producer uses the locked ``try_write`` and, when the reader falls behind
   and the 8 MiB ring is full, sleeps 100 us before retrying (counted).
4. End-to-end records/s with 1, 2 and 4 producer processes (one ring each)
   and one reader process draining all rings.
5. ``RingReader.read_batch`` ns per record (batches of 1000, no producer).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import queue
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import msgpack
import ormsgpack

import ringbuf
from collector.testing import authz_record

TARGET_WRITE_NS = 500
TARGET_CPU_RATIO = 10
TARGET_E2E_1P = 500_000
GROUP = 100  # writes per timed group
_WARM = 10_000  # queue puts before the clock starts


def _payload() -> bytes:
    return msgpack.packb(authz_record(0, 1))


# -- helpers run in child processes (fork) ----------------------------------------

def _drain(paths: list[str], stop: Any, expect: int, done: Any) -> None:
    """Read every ring round-robin until ``expect`` records (or ``stop`` when 0)."""
    readers = [ringbuf.RingReader.open(p) for p in paths]
    got = 0
    while True:
        idle = True
        for r in readers:
            batch = r.read_batch(4096)
            if batch:
                r.commit()
                got += len(batch)
                idle = False
        if expect and got >= expect:
            break
        if not expect and idle and stop.is_set():
            break
        if idle:
            os.sched_yield()
    done.value = got


def _produce(path_q: Any, directory: str, n: int, start: Any, capacity: int) -> None:
    w = ringbuf.RingWriter.create(directory, capacity_bytes=capacity, thread_safe=False,
                                  count_full_drops=False)
    path_q.put(w.path)
    p = _payload()
    write = w.try_write
    start.wait()
    for _ in range(n):
        while not write(p):
            os.sched_yield()
    w.close()


def _cpu_ring(directory: str, n: int, out: Any) -> None:
    w = ringbuf.RingWriter.create(directory, capacity_bytes=8 << 20, thread_safe=True,
                                  count_full_drops=False)
    stop, done = mp.Event(), mp.Value("q", 0)
    p = _payload()
    warm = 2 * w.capacity // len(p)  # two laps: every page of the ring mapped
    reader = mp.Process(target=_drain, args=([w.path], stop, warm + n, done))
    reader.start()
    write = w.try_write
    for _ in range(warm):
        while not write(p):
            os.sched_yield()
    retries = 0
    sleep = time.sleep
    t0 = time.process_time()
    for _ in range(n):
        while not write(p):
            # The reader is behind (descheduled): wait without burning CPU, as
            # mp.Queue's unbounded buffer lets its producer do.
            retries += 1
            sleep(0.0001)
    cpu = time.process_time() - t0
    reader.join()
    out.put(("ring", cpu / n * 1e9, retries))


def _mpq_consumer(q: Any, n: int) -> None:
    for _ in range(n):
        q.get()


def _cpu_mpqueue(n: int, out: Any) -> None:
    q: Any = mp.Queue()
    consumer = mp.Process(target=_mpq_consumer, args=(q, n))
    consumer.start()
    p = _payload()
    put = q.put
    for _ in range(_WARM):
        put(p)
    t0 = time.process_time()
    for _ in range(n - _WARM):
        put(p)
    q.close()
    q.join_thread()  # the feeder thread has written everything to the pipe
    cpu = time.process_time() - t0
    consumer.join()
    out.put(("mp.Queue", cpu / (n - _WARM) * 1e9, 0))


def _ff_consumer(q: Any, n: int) -> None:
    got = 0
    while got < n:
        try:
            got += len(q.get_many(timeout=10, max_messages_to_get=1000))
        except queue.Empty:
            return


def _cpu_faster_fifo(n: int, out: Any) -> None:
    try:
        import faster_fifo
    except ImportError:
        out.put(("faster_fifo", float("nan"), 0))
        return
    q = faster_fifo.Queue(max_size_bytes=8 << 20)
    consumer = mp.Process(target=_ff_consumer, args=(q, n))
    consumer.start()
    p = _payload()
    put = q.put
    retries = 0
    for _ in range(_WARM):
        put(p, timeout=10)
    t0 = time.process_time()
    for _ in range(n - _WARM):
        while True:
            try:
                put(p, timeout=10)
                break
            except queue.Full:
                retries += 1
    cpu = time.process_time() - t0
    consumer.join()
    out.put(("faster_fifo", cpu / (n - _WARM) * 1e9, retries))


# -- measurements -----------------------------------------------------------------

def _groups(fn: Any, arg: Any, groups: int,
            writer: ringbuf.RingWriter | None = None) -> list[float]:
    """Per-call ns of ``fn(arg)``, timed in groups of GROUP calls, sorted.

    With ``writer``, waits (untimed) between groups until the reader left
    room for a few groups, so the ring is never found full: the reader
    process needs more time per record than the writer.
    """
    ns = time.perf_counter_ns
    rng = range(GROUP)
    out = []
    room = 4 * GROUP * (len(arg) + 24) if writer is not None else 0
    for _ in range(groups):
        if writer is not None:
            while writer.free_bytes() < room:
                os.sched_yield()
        t = ns()
        for _ in rng:
            fn(arg)
        out.append((ns() - t) / GROUP)
    out.sort()
    return out


def _pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def write_latency(directory: str, groups: int) -> dict[str, Any]:
    """ns per write (groups of 100) with a reader process draining; encoders too."""
    rec = authz_record(0, 1)
    p = msgpack.packb(rec)
    res: dict[str, Any] = {"bytes": len(p)}

    def noop(_: Any) -> bool:
        return True

    base = _groups(noop, p, groups)
    res["loop"] = statistics.median(base)
    for name, ts in (("unlocked", False), ("locked", True)):
        w = ringbuf.RingWriter.create(directory, capacity_bytes=1 << 24, thread_safe=ts)
        stop, done = mp.Event(), mp.Value("q", 0)
        reader = mp.Process(target=_drain, args=([w.path], stop, 0, done))
        reader.start()
        try:
            _groups(w.try_write, p, groups // 10, w)  # warm up
            lat = _groups(w.try_write, p, groups, w)
            packer = msgpack.Packer()
            enc = {
                "msgpack.packb": lambda r, f=w.try_write: f(msgpack.packb(r)),
                "Packer().pack": lambda r, f=w.try_write, pk=packer.pack: f(pk(r)),
                "ormsgpack.packb": lambda r, f=w.try_write: f(ormsgpack.packb(r)),
            }
            enc_lat = {}
            for k, fn in enc.items():
                while w.free_bytes() < w.capacity // 2:
                    os.sched_yield()
                enc_lat[k] = statistics.median(_groups(fn, rec, min(groups // 2, 50_000)))
        finally:
            stop.set()
            reader.join()
        res[name] = {"p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99),
                     "dropped": w.dropped, "encode+write": enc_lat}
        w.close()
    # The encoders alone, for reference.
    res["encode_only"] = {
        "msgpack.packb": statistics.median(_groups(msgpack.packb, rec, groups // 2)),
        "ormsgpack.packb": statistics.median(_groups(ormsgpack.packb, rec, groups // 2)),
    }
    return res


def producer_cpu(directory: str, n: int) -> dict[str, tuple[float, int]]:
    out: Any = mp.Queue()
    results: dict[str, tuple[float, int]] = {}
    for target, args in ((_cpu_ring, (directory, n)), (_cpu_mpqueue, (n,)),
                         (_cpu_faster_fifo, (n,))):
        proc = mp.Process(target=target, args=(*args, out))
        proc.start()
        name, ns_per, retries = out.get(timeout=600)
        proc.join()
        results[name] = (ns_per, retries)
    return results


def end_to_end(directory: str, producers: int, n: int) -> float:
    start = mp.Event()
    paths: Any = mp.Queue()
    procs = [mp.Process(target=_produce, args=(paths, directory, n, start, 8 << 20))
             for _ in range(producers)]
    for p in procs:
        p.start()
    ring_paths = [paths.get(timeout=60) for _ in procs]
    stop, done = mp.Event(), mp.Value("q", 0)
    reader = mp.Process(target=_drain, args=(ring_paths, stop, producers * n, done))
    reader.start()
    t0 = time.perf_counter()
    start.set()
    reader.join()
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    for path in ring_paths:
        os.unlink(path)
    return done.value / elapsed


def read_cost(directory: str, rounds: int) -> float:
    p = _payload()
    w = ringbuf.RingWriter.create(directory, capacity_bytes=1 << 24, thread_safe=False)
    r = ringbuf.RingReader.open(w.path)
    best = float("inf")
    for _ in range(rounds):
        n = 0
        while w.try_write(p):
            n += 1
        t = time.perf_counter_ns()
        while r.read_batch(1000):
            r.commit()
        best = min(best, (time.perf_counter_ns() - t) / n)
    r.close()
    w.close()
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench ring", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer records (a smoke run)")
    args = ap.parse_args(argv)
    mp.set_start_method("fork", force=True)
    groups = 2_000 if args.quick else 10_000
    n_cpu = 100_000 if args.quick else 400_000
    n_e2e = 200_000 if args.quick else 1_000_000
    # On tmpfs, as in production (a ring on a disk file system pays for writeback).
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    directory = tempfile.mkdtemp(prefix="bench-ring-", dir=shm)
    os.chmod(directory, 0o700)
    try:
        print(f"python {platform.python_version()} ({sys.executable}), "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        lat = write_latency(directory, groups)
        loop = lat["loop"]
        print(f"\n1. try_write of a {lat['bytes']}-byte msgpack record, reader process "
              f"draining (groups of {GROUP}; timing loop + call of a no-op: {loop:.0f} ns)")
        for name in ("unlocked", "locked"):
            r = lat[name]
            print(f"   {name:9s} p50 {r['p50']:6.0f} ns  p99 {r['p99']:6.0f} ns   "
                  f"ring's own cost p50 {r['p50'] - loop:5.0f} ns   (dropped {r['dropped']})")
        own = lat["unlocked"]["p50"] - loop
        print(f"   lock cost (locked - unlocked, p50): "
              f"{lat['locked']['p50'] - lat['unlocked']['p50']:.0f} ns")
        print(f"   target: ring's own cost <= {TARGET_WRITE_NS} ns median -> "
              f"{'met' if own <= TARGET_WRITE_NS else 'MISSED'} ({own:.0f} ns)")
        print("\n2. encode + try_write (p50 per record)")
        for name in ("unlocked", "locked"):
            cells = "  ".join(f"{k} {v:5.0f} ns" for k, v in lat[name]["encode+write"].items())
            print(f"   {name:9s} {cells}")
        cells = "  ".join(f"{k} {v:5.0f} ns" for k, v in lat["encode_only"].items())
        print(f"   encoder alone: {cells}")

        cpu = producer_cpu(directory, n_cpu)
        ring_ns = cpu["ring"][0]
        print(f"\n3. producer process CPU per record ({n_cpu} records, consumer draining; "
              "process_time incl. helper threads)")
        for name, (ns_per, retries) in cpu.items():
            ratio = ns_per / ring_ns if ring_ns else float("nan")
            extra = f"  (retries on full: {retries})" if retries else ""
            print(f"   {name:12s} {ns_per:8.0f} ns/record   {ratio:5.1f}x ours{extra}")
        mpq = cpu["mp.Queue"][0] / ring_ns
        print(f"   mp.Queue CPU/record is {mpq:.1f}x ours; faster_fifo "
              f"{cpu['faster_fifo'][0] / ring_ns:.1f}x ours "
              f"(target >= {TARGET_CPU_RATIO}x: {'met' if mpq >= TARGET_CPU_RATIO else 'MISSED'})")

        print(f"\n4. end to end, N producer processes -> 1 reader process "
              f"({n_e2e} records per producer)")
        e2e = {}
        for producers in (1, 2, 4):
            e2e[producers] = end_to_end(directory, producers, n_e2e // producers)
            print(f"   {producers} producer(s): {e2e[producers]:12,.0f} records/s")
        print(f"   target >= {TARGET_E2E_1P:,} records/s with 1 producer: "
              f"{'met' if e2e[1] >= TARGET_E2E_1P else 'MISSED'}")

        rd = read_cost(directory, 3)
        print(f"\n5. read_batch(1000) + commit: {rd:.0f} ns per record "
              f"({1e9 / rd:,.0f} records/s for one reader)")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

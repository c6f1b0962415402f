"""What a flusher spends per record outside the Redis call: ``python -m bench drain [--quick]``.

A flusher's work per batch, without the network: read the ring's records
(up to ``batch_size`` 1000 and ``batch_bytes`` 1 MiB, as shipped), make the
stream entry, pack the ``XADD``/``XLEN`` round trip into the chunks it
would send (``collector.daemon._xadd.pack_xadd_xlen``) and commit the ring.
The ring holds ~450-byte authz records (``collector.testing.authz_record``
encoded by ormsgpack, as ``record_hit`` writes them). Three ways, side by
side in one run:

* ``list``: ``read_batch`` (one bytes object per record) and
  ``encode_entry`` (msgpack packs the list into the ``recs`` blob): what
  the flusher did before it read packed batches;
* ``packed``: ``read_packed`` (each read is ONE bytes object of msgpack
  bins, copied out of the ring by ``ringbuf._cread``) and
  ``encode_packed_entry`` (an array header in front; no second copy):
  the flusher now, on the native path;
* ``packed-pure``: the same with ``COLLECTOR_PURE_PYTHON=1`` (the
  reference scanner and ``pack_bins``), in a child process.

Two figures: CPU ns per record (``time.process_time`` over a drain of the
whole ring, after a first drain that mapped its pages: a flusher's mapping
lives long; median of ``--repeat`` interleaved runs; noisy on a shared
machine, hence the ratios) and, with valgrind installed, **instructions per
record** from ``valgrind --tool=callgrind``: a child drains a ring of ``n``
and one of ``n + delta`` records (filled by the parent beforehand, so the
filling is not counted), and the difference over ``delta`` is the count
per record; repeatable whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ringbuf
from collector.common.stream import encode_entry, encode_packed_entry
from collector.daemon._xadd import pack_xadd_xlen

WAYS = ("list", "packed", "packed-pure")
BATCH_SIZE = 1000
BATCH_BYTES = 1024 * 1024
KEY = b"collector:analytics"


def fill(directory: str, n: int, capacity: int) -> str:
    """A ring in ``directory`` holding ``n`` authz records (closed by its producer); its path."""
    import ormsgpack

    from collector.testing import authz_record

    w = ringbuf.RingWriter.create(directory, capacity_bytes=capacity)
    rec = authz_record(0, 0)
    for seq in range(n):
        rec["seq"] = seq
        if not w.try_write(ormsgpack.packb(rec)):
            raise RuntimeError(f"ring full after {seq} records; raise the capacity")
    path = str(w.path)
    w.close()
    return path


def drain(r: ringbuf.RingReader, way: str, *, commit: bool = True) -> int:
    """Drain ``r`` as a flusher would, ``way`` (module doc); records read."""
    total = 0
    if way == "list":
        while batch := r.read_batch(BATCH_SIZE, BATCH_BYTES):
            pending: list[bytes] = []
            pending.extend(batch)
            fields = encode_entry(r.ring_id, batch.first_seq, pending)
            pack_xadd_xlen(KEY, fields)
            if commit:
                r.commit()
            total += len(pending)
    else:
        while (p := r.read_packed(BATCH_SIZE, BATCH_BYTES)).n:
            parts: list[bytes] = []
            parts.extend(p.parts)
            fields2 = encode_packed_entry(r.ring_id, p.first_seq, p.n, parts)
            pack_xadd_xlen(KEY, fields2)
            if commit:
                r.commit()
            total += p.n
    return total


def _env(way: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("COLLECTOR_PURE_PYTHON", None)
    env["PYTHONHASHSEED"] = "0"  # the same instructions run after run (callgrind)
    if way == "packed-pure":
        env["COLLECTOR_PURE_PYTHON"] = "1"
    return env


def _child(way: str, path: str, timed: bool) -> None:
    """One drain in this process; prints {records, cpu_ns} as JSON.

    ``timed``: a first drain without commits maps the ring's pages and warms
    the allocator (a flusher's mapping lives long; the first touch of a page
    costs a fault), then the ring is rolled back and the drain that counts
    runs. Under callgrind (not ``timed``) there is no first drain: faults cost
    no instructions of the process.
    """
    r = ringbuf.RingReader.open(path)
    try:
        if timed:
            drain(r, way, commit=False)
            r.rollback()
        t = time.process_time_ns()
        n = drain(r, way)
        cpu = time.process_time_ns() - t
    finally:
        r.close()
    print(json.dumps({"records": n, "cpu_ns": cpu}))


def _run_child(way: str, path: str, *, valgrind_out: Path | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.drain", "--child", way, path,
           "untimed" if valgrind_out is not None else "timed"]
    if valgrind_out is not None:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={valgrind_out}",
               "--dump-line=no", "--compress-strings=no", *cmd]
    out = subprocess.run(cmd, env=_env(way), check=True, capture_output=True, text=True,
                         timeout=1800)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _ir(way: str, path: str, work: Path) -> int:
    out = work / f"cg-{way}-{os.path.basename(path)}.out"
    _run_child(way, path, valgrind_out=out)
    m = re.search(r"^(?:summary|totals): (\d+)", out.read_text(errors="replace"), re.M)
    if m is None:
        raise RuntimeError(f"no instruction total in {out}")
    out.unlink()
    return int(m.group(1))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[2], timed=argv[3] == "timed")
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench drain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer records and repeats")
    ap.add_argument("--records", type=int, default=None, help="records per timed drain "
                    "(default 100,000; quick 30,000)")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per way (7; quick 3)")
    ap.add_argument("--no-callgrind", action="store_true", help="skip the instruction counts")
    args = ap.parse_args(argv)
    n = args.records or (30_000 if args.quick else 100_000)
    repeat = args.repeat or (3 if args.quick else 7)
    import ormsgpack

    from collector.testing import authz_record

    size = len(ormsgpack.packb(authz_record(0, 0)))
    print(f"flusher drain without Redis: batches of {BATCH_SIZE} records / {BATCH_BYTES >> 20} "
          f"MiB, ~{size}-byte records, native reader scanner "
          f"{'built' if ringbuf._scan.scan_packed is not None else 'NOT built'}")
    work = Path(tempfile.mkdtemp(prefix="bench-drain-",
                                 dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    os.chmod(work, 0o700)
    capacity = 1 << max(20, (n * (size + 24) * 2 - 1).bit_length())
    try:
        cpu: dict[str, list[float]] = {w: [] for w in WAYS}
        for _ in range(repeat):
            for way in WAYS:  # interleaved: every way sees the same machine state
                d = tempfile.mkdtemp(dir=work)
                path = fill(d, n, capacity)
                res = _run_child(way, path)
                if res["records"] != n:
                    raise RuntimeError(f"{way}: drained {res['records']} of {n} records")
                cpu[way].append(res["cpu_ns"] / n)
                shutil.rmtree(d)
        med = {w: statistics.median(v) for w, v in cpu.items()}
        print(f"\nCPU ns per record, median of {repeat} interleaved drains of {n:,} records "
              "[min-max] (the whole child's CPU over the drain):")
        for w in WAYS:
            print(f"  {w:<12} {med[w]:8.0f} [{min(cpu[w]):.0f}-{max(cpu[w]):.0f}]  "
                  f"{med[w] / med['list']:.2f}x list")
        if args.no_callgrind or shutil.which("valgrind") is None:
            print("\n(no instruction counts: valgrind not found or --no-callgrind)")
            return 0
        small, delta = 1000, (5000 if args.quick else 20_000)
        print(f"\ninstructions per record (valgrind --tool=callgrind: drains of {small + delta:,}"
              f" minus {small:,} records, over {delta:,}):", flush=True)
        ir: dict[str, float] = {}
        cap2 = 1 << max(20, ((small + delta) * (size + 24) * 2 - 1).bit_length())
        for way in WAYS:
            counts = []
            for k in (small, small + delta):
                d = tempfile.mkdtemp(dir=work)
                counts.append(_ir(way, fill(d, k, cap2), work))
                shutil.rmtree(d)
            ir[way] = (counts[1] - counts[0]) / delta
            print(f"  {way:<12} {ir[way]:8.0f}  {ir[way] / ir['list']:.2f}x list", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

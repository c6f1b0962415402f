"""A pump worker's cost per record, without the machine's load in it.

``python -m bench._pump_cost callgrind SINK [--entries N]`` runs the real
:class:`pump._worker.Worker` in one process draining a pre-filled stream
(the bench's records, 100 an entry, ``read_count`` 50) from a private
``redis-server``, twice under ``valgrind --tool=callgrind`` (``N`` and ``2N``
entries, counting only the drain: ``--instr-atstart=no`` and
``callgrind_control -i on/off`` around it) and prints the instructions per
record of the difference: start-up cancels out, the worker's own reading,
decoding, delivering and acknowledging stays (Redis's own work and the
kernel's are not counted). ``profile SINK`` runs it once under pyinstrument
and prints the call tree. The child prints its wall, user and system time
per record of the drain. SINK is ``null``, ``file`` (JSON Lines;
``--fsync batch|never``) or ``postgres`` (a table of its own per child in
$COLLECTOR_TEST_PG_DSN, dropped after; the server's work is not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KEY = "collector:analytics"


def _config(url: str, sink: str, work: Path, fsync: str, read_count: int) -> Any:
    from pump.config import load_config

    meta: dict[str, Any] = {}
    if sink == "file":
        meta = {"path": str(work / "out.jsonl"), "format": "jsonl", "fsync": fsync}
    elif sink == "postgres":
        from collector.testing import pg_dsn

        meta = {"dsn": pg_dsn(), "table": _pg_table()}
    return load_config({"redis_url": url, "read_block_s": 0.05, "read_count": read_count,
                        "pumps": {"s": {"type": sink, "meta": meta}}}, environ={})


def drain(url: str, sink: str, work: Path, fsync: str, entries: int, read_count: int = 50
          ) -> None:
    """One worker reads and delivers ``entries`` entries (the child's whole job)."""
    from pump._metrics import WORKER_COUNTERS
    from pump._worker import Stopper, Worker, tune_process

    w = Worker(_config(url, sink, work, fsync, read_count), "s",
               counters=WORKER_COUNTERS.local_slot(), stopper=Stopper())
    w.sink.open()
    tune_process()
    _instrument("on")
    t0, c0 = time.perf_counter(), os.times()
    done = 0
    while done < entries:
        done += w.reader.step()
    c1, t1 = os.times(), time.perf_counter()
    _instrument("off")
    w.sink.close()
    if sink == "postgres":
        from collector.testing import drop_tables

        drop_tables(_pg_table())
    n = entries * 100
    print(json.dumps({"records": n, "wall_us": round((t1 - t0) / n * 1e6, 3),
                      "user_us": round((c1.user - c0.user) / n * 1e6, 3),
                      "sys_us": round((c1.system - c0.system) / n * 1e6, 3)}), file=sys.stderr)


def _pg_table() -> str:
    """The postgres sink's table of this child (its own: the children store the same ids)."""
    return f"bench_pump_cost_{os.getpid()}"


def _instrument(state: str) -> None:
    """Switch callgrind's counting on or off for this process (no-op outside valgrind)."""
    if os.environ.get("PUMP_COST_CALLGRIND"):
        subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], check=True,
                       capture_output=True)


def _fill(url: str, entries: int, group: str) -> None:
    import redis

    from collector.testing import fill_stream

    from .pump import _record

    r = redis.Redis.from_url(url)
    r.delete(KEY)
    fill_stream(r, entries * 100, key=KEY, ring="b" * 32, record=_record)
    r.xgroup_create(KEY, group, id="0")


def _child_cmd(url: str, sink: str, work: Path, fsync: str, entries: int,
               read_count: int) -> list[str]:
    return [sys.executable, "-m", "bench._pump_cost", "child", sink, "--url", url,
            "--work", str(work), "--fsync", fsync, "--entries", str(entries),
            "--read-count", str(read_count)]


def _instructions(cmd: list[str], out: Path) -> int:
    subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out}", *cmd], check=True, capture_output=True,
                   env={**os.environ, "PUMP_COST_CALLGRIND": "1"}, timeout=3600)
    text = out.read_text(errors="replace")
    m = re.search(r"^totals:\s*(\d+)", text, re.M)
    if not m:
        raise RuntimeError("no totals in the callgrind output")
    return int(m.group(1))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench._pump_cost")
    ap.add_argument("mode", choices=("callgrind", "profile", "child"))
    ap.add_argument("sink", choices=("null", "file", "postgres"))
    ap.add_argument("--entries", type=int, default=100)
    ap.add_argument("--fsync", default="batch", choices=("batch", "never"))
    ap.add_argument("--read-count", type=int, default=50, help="entries per XREADGROUP")
    ap.add_argument("--url", default="")
    ap.add_argument("--work", default="")
    args = ap.parse_args(argv)
    if args.mode == "child":
        drain(args.url, args.sink, Path(args.work), args.fsync, args.entries, args.read_count)
        return 0

    from collector.testing import RedisServer

    with tempfile.TemporaryDirectory(prefix="pump-cost-") as tmp:
        work = Path(tmp)
        server = RedisServer(work / "redis", appendonly=False).start()
        try:
            if args.mode == "profile":
                from pyinstrument import Profiler

                _fill(server.url, args.entries, "s")
                prof = Profiler(interval=0.0005)
                t0 = time.perf_counter()
                with prof:
                    drain(server.url, args.sink, work, args.fsync, args.entries,
                          args.read_count)
                print(f"{args.entries * 100:,} records in {time.perf_counter() - t0:.2f} s")
                print(prof.output_text(unicode=False, color=False, show_all=False))
                return 0
            counts = {}
            for n in (args.entries, 2 * args.entries):
                _fill(server.url, n, "s")
                (work / "out.jsonl").unlink(missing_ok=True)
                counts[n] = _instructions(_child_cmd(server.url, args.sink, work, args.fsync, n,
                                                     args.read_count),
                                          work / f"cg.{n}")
            per = (counts[2 * args.entries] - counts[args.entries]) / (args.entries * 100)
            print(json.dumps({"sink": args.sink, "fsync": args.fsync,
                              "instructions_per_record": round(per),
                              "runs": {str(k): v for k, v in counts.items()}}))
        finally:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

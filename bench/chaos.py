"""``python -m bench chaos``: randomized faults with Jepsen-queue-style accounting.

Producers (``collector.Analytics`` clients, one process each) write
sequence-numbered authz records at a steady rate. The harness runs its own
``redis-server`` (append-only file, ``appendfsync always`` by default: a
write Redis acknowledged is on disk before the reply leaves, so neither a
``kill -9`` of Redis nor a crash of the machine loses it; ``everysec`` is
safe against a ``kill -9`` of Redis as well, because Redis write()s the AOF
before replying, but a machine crash can take the last second), a
``collector-daemon`` and a ``collector-pump`` with three sinks:

- ``file`` (JSON Lines; cannot deduplicate a redelivered batch),
- ``http`` (POSTs to a loopback server of this harness, which can answer 503),
- ``postgres`` (the machine's PostgreSQL, a private table; deduplicates by id;
  its outage is a table held under ``LOCK TABLE ... ACCESS EXCLUSIVE`` by the
  harness, never a stop of the server).

A scheduler injects ``--faults`` faults at random points over ``--duration``
seconds, each drawn from: ``kill -9`` of a producer (a new one continues
with a new producer id), of a flusher, of the whole daemon (restarted), of a
pump worker, of the whole pump (restarted), a Redis ``kill -9`` and restart,
an http sink outage (503) and a PostgreSQL sink outage (table locked) with
their recovery, ``SIGSTOP``/``SIGCONT`` of the daemon, a hung http sink
(its target accepts and never answers, then recovers: that sink spools
while the others go on) and foreign consumer groups on the stream (which
must not stop trimming); the last two are undone on a timer, so other
faults land meanwhile (``bench/_chaos_spool.py``).

The daemon and the pump run with a small byte budget (``--max-backlog-bytes``,
4 MiB) so that a sink that lags a few seconds moves its backlog into its
spool (``--spool-max-bytes``, ``--overflow``). A record dropped from a full
spool (``drop_oldest``) is counted by the pump and logged; the report puts
those counts beside the sink's missing records: they may be missing there,
and nowhere else. Each fault reports the records producers dropped while it
lasted.

At the end everything is healed, producers stop, the harness waits for
quiescence (every ring empty, every sink's group lag 0, every spool empty),
stops pump and daemon and reports per sink: records acknowledged to
producers (``record_hit`` returned True), delivered, **lost** (acknowledged,
never delivered, not dead-lettered), **unexpected** (delivered, never sent,
or sent but dropped by policy), **duplicated** (each attributed to the
fault under way when the record was sent, else the first one after),
dead-lettered, and drops by policy with causes. The exit
status is 1 when anything is lost or unexpected. The seed is printed first;
``--seed`` replays the same schedule of faults (timings of the processes
themselves still vary).

``--redis-no-persistence`` runs Redis without AOF or snapshots: every Redis
restart then empties it, and the records it held that not every sink had
read are lost — Redis's own window, reported as such (the run does not fail
for it). ``appendonly yes`` with ``appendfsync always`` (or ``everysec``)
closes it.

``--cluster`` runs Redis as a cluster of 3 masters with a replica each
(``redis-cli --cluster create``) and 3 stream shards; the Redis fault then
kills one master at random (``bench/_chaos_cluster.py``), which a replica
takes over when it stays down longer than the 2 s node timeout, and the
daemon runs with ``min_replicas_acked: 1`` (``--replicas-acked`` changes
it; 0 shows what a failover loses without replica acknowledgement).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from collector.testing import pg_dsn

from ._chaos_faults import KINDS
from ._chaos_stack import Chaos

__all__ = ["KINDS", "main", "run"]

RESULTS = Path(__file__).resolve().parent / "results"


def print_report(rep: dict[str, Any], *, no_persistence: bool) -> None:
    print(f"\nchaos: seed {rep['seed']}: {rep['faults']} faults in {rep['load_s']}s "
          f"({', '.join(f'{k} {v}' for k, v in sorted(rep['faults_by_kind'].items()))})")
    drops = ", ".join(f"{k} {v:,}" for k, v in sorted(rep["producer_drops_by_fault"].items())
                      if v)
    print(f"chaos: record_hit returned False during faults: {drops or 'none'}")
    alone = rep["producer_drops_by_fault_alone"]
    alone_text = ", ".join(f"{k} {v['producer_drops']:,} in {v['faults']}"
                           for k, v in sorted(alone.items()))
    print(f"chaos: ... during those no other fault overlapped: {alone_text or '-'}")
    print(f"chaos: {rep['producers_started']} producer processes, "
          f"{rep['records_attempted']:,} records attempted; Redis {rep['redis_persistence']}, "
          f"{rep['redis_restarts']} restarts; quiescent: {rep['quiescent']}")
    d = rep["dropped_by_policy"]
    print(f"chaos: dropped by policy: {d['returned_false']:,} record_hit calls returned False "
          f"(rings counted {d['ring_full']:,} ring full, {d['oversize']:,} oversize)")
    hdr = (f"{'sink':<9}{'dedup':>6}{'acked':>10}{'delivered':>10}{'lost':>7}"
           f"{'unexpect':>9}{'dups':>9}{'dead':>6}{'inflight':>9}  duplicates by fault")
    print(hdr)
    for s in rep["sinks"]:
        causes = ", ".join(f"{k} {v}" for k, v in sorted(s["duplicates_by_fault"].items()))
        if s["duplicates_unexplained"]:
            causes += f", UNEXPLAINED {s['duplicates_unexplained']}"
        print(f"{s['sink']:<9}{'yes' if s['deduplicates'] else 'no':>6}{s['acknowledged']:>10,}"
              f"{s['delivered']:>10,}{s['lost']:>7,}{s['unexpected']:>9,}{s['duplicated']:>9,}"
              f"{s['dead_lettered']:>6,}{s['uncertain_delivered']:>9,}  {causes or '-'}")
        if s["lost"]:
            causes = ", ".join(f"{k} {v}" for k, v in sorted(s["lost_by_fault"].items()))
            print(f"    lost, by the fault under way or the first after: {causes}")
        if s["spool_dropped"] or s["records_spooled_seen"]:
            d, lost = s["spool_dropped"], s["lost"]
            exact = ("= missing" if d == lost else
                     f"> missing {lost:,}: {d - lost:,} of them were delivered all the same"
                     if d > lost else f"< missing {lost:,}: {lost - d:,} LOST beyond them")
            print(f"    spool: {s['records_spooled_seen']:,}+ records spooled; dropped from "
                  f"a full spool (counted, logged): {s['spool_dropped']:,} {exact}")
        for x in s["lost_sample"][:5]:
            print(f"    lost: {x}")
        for x in s["unexpected_sample"][:5]:
            print(f"    unexpected: {x}")
    for g in rep["foreign_groups"]:
        if g:
            print(f"chaos: foreign groups of fault {g['fault']} ({g['lived_s']}s): largest "
                  f"shard {g['max_xlen']:,} entries, {g['max_bytes']:,} B = "
                  f"{g['max_bytes_of_budget']:.0%} of its {g['budget_bytes_per_shard']:,} B "
                  f"budget; {g['entries_trimmed']:,} entries trimmed meanwhile, past the "
                  f"groups: {g['trimmed_past_the_groups']}; producers dropped "
                  f"{g['producer_drops']:,}")
    st = rep["streams"]
    print(f"chaos: largest shard without a foreign group: {st['max_xlen_without_foreign']:,} "
          f"entries, {st['max_bytes_without_foreign']:,} B (budget {rep['max_backlog_bytes']:,} "
          "B over the shards)")
    if no_persistence:
        print("chaos: Redis ran without persistence: records Redis held when it restarted "
              "are lost (Redis's own window); appendonly yes + appendfsync always|everysec "
              "closes it.")


def verdict(rep: dict[str, Any], *, no_persistence: bool) -> int:
    bad = any(s["unexpected"] for s in rep["sinks"])
    if not no_persistence:  # a record dropped from a full spool was counted, and may miss
        bad = bad or any(s["lost_beyond_spool_drops"] for s in rep["sinks"])
    return 1 if bad else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench chaos",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 20 faults over 60 s unless --faults/--duration say")
    ap.add_argument("--faults", type=int, default=None,
                    help="faults to inject (default 100; quick 20)")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds of load while faults are injected (default 300; quick 60)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    ap.add_argument("--producers", type=int, default=3, help="producer processes (default 3)")
    ap.add_argument("--rate", type=float, default=500.0,
                    help="records/s per producer (default 500)")
    ap.add_argument("--sinks", default="file,http,postgres",
                    help="comma-separated subset of file,http,postgres (default all)")
    ap.add_argument("--kinds", type=lambda s: [k for k in s.split(",") if k], default=None,
                    help=f"fault kinds to draw from (default all: {','.join(KINDS)})")
    ap.add_argument("--appendfsync", choices=("always", "everysec"), default="always",
                    help="Redis AOF fsync policy (default always)")
    ap.add_argument("--cluster", action="store_true",
                    help="Redis as a 3-master cluster with a replica each, 3 stream shards; "
                         "redis_restart kills one master (a failover when held long enough)")
    ap.add_argument("--replicas-acked", type=int, default=None,
                    help="the daemon's min_replicas_acked (default 1 with --cluster, else 0)")
    ap.add_argument("--redis-no-persistence", action="store_true",
                    help="run Redis without AOF/snapshots and report what a restart loses")
    ap.add_argument("--ring-bytes", type=int, default=2 * 1024 * 1024,
                    help="ring capacity per producer (power of two, default 2 MiB)")
    ap.add_argument("--hold-min", type=float, default=0.5, help="shortest outage (s)")
    ap.add_argument("--hold-max", type=float, default=3.0, help="longest outage (s)")
    ap.add_argument("--hung-min", type=float, default=4.0,
                    help="shortest hang of the http target (hung_sink, s; default 4)")
    ap.add_argument("--hung-max", type=float, default=12.0,
                    help="longest hang of the http target (s; default 12)")
    ap.add_argument("--foreign-min", type=float, default=5.0,
                    help="shortest life of a foreign_group fault's groups (s; default 5)")
    ap.add_argument("--foreign-max", type=float, default=20.0,
                    help="longest life of a foreign_group fault's groups (s; default 20)")
    ap.add_argument("--max-backlog-bytes", type=int, default=4 << 20,
                    help="the daemon's and the pump's byte budget over the shards "
                         "(default 4 MiB: a sink lagging a few seconds spools)")
    ap.add_argument("--spool-max-bytes", type=int, default=256 << 20,
                    help="each sink's spool_max_bytes per worker (default 256 MiB)")
    ap.add_argument("--overflow", choices=("drop_oldest", "block"), default="drop_oldest",
                    help="each sink's overflow policy when its spool is full")
    ap.add_argument("--quiesce-timeout", type=float, default=180.0,
                    help="seconds to wait for empty rings and zero lag at the end")
    ap.add_argument("--pg-dsn", default=pg_dsn(),
                    help="PostgreSQL of the postgres sink (default $COLLECTOR_TEST_PG_DSN "
                         "or dbname=collector_test)")
    ap.add_argument("--workdir", default=None, help="keep files here (default a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("--json", default=None, help="write the report here "
                    "(default bench/results/chaos-<date>.json)")
    ap.add_argument("--quiet", action="store_true", help="print only the report")
    args = ap.parse_args(argv)
    if args.faults is None:
        args.faults = 20 if args.quick else 100
    if args.duration is None:
        args.duration = 60.0 if args.quick else 300.0
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    if args.replicas_acked is None:
        args.replicas_acked = 1 if args.cluster else 0
    bad = set(args.kinds or ()) - set(KINDS)
    if bad:
        ap.error(f"--kinds: unknown kind(s) {sorted(bad)}; known: {', '.join(KINDS)}")
    bad = set(args.sinks.split(",")) - {"file", "http", "postgres"}
    if bad:
        ap.error(f"--sinks: unknown sink(s) {sorted(bad)}; known: file, http, postgres")
    return args


def run(argv: list[str] | None = None) -> tuple[int, dict[str, Any]]:
    """Run chaos; return (exit status, report)."""
    args = parse_args(argv)
    print(f"chaos: seed {args.seed} (replay with --seed {args.seed})", flush=True)
    chaos = Chaos(args)

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(f"chaos: stopped by signal {signum}")

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        rep = chaos.run()
    finally:
        chaos.close()
        signal.signal(signal.SIGTERM, old)
    print_report(rep, no_persistence=args.redis_no_persistence)
    out = Path(args.json) if args.json else RESULTS / time.strftime("chaos-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=2))
    print(f"chaos: report written to {out}")
    status = verdict(rep, no_persistence=args.redis_no_persistence)
    if status == 0 and not args.keep and args.workdir is None:
        shutil.rmtree(chaos.workdir, ignore_errors=True)
    elif status:
        print(f"chaos: FAILED; files kept in {chaos.workdir} (logs/ has daemon and pump logs)")
    return status, rep


def main(argv: list[str] | None = None) -> int:
    return run(argv)[0]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

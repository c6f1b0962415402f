"""A ring changed underneath never brings down the daemon (issue 10, finding 2).

``truncate -s 0`` of a served ring used to kill a flusher and the
supervisor (which read headers through a mapping) with ``SIGBUS``. Now the
supervisor reads headers with ``pread``, a flusher checks a ring's file
before each batch, and a flusher that dies of a signal is restarted: the
bad ring is quarantined, the others keep flowing. Records are counted by
(producer, seq).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from collector.testing import (
    Daemon,
    Producers,
    RedisServer,
    account,
    producer_ids,
    stream_record_count,
    tally_stream,
    wait_until,
)


def _ring_files(rings_dir: Path) -> list[Path]:
    return sorted(rings_dir.glob("*.ring"))


def test_one_ring_truncated_to_zero_while_three_others_flow(
        tmp_path: Path, rings_dir: Path, redis_server: RedisServer) -> None:
    n, count = 3, 20_000
    client = redis_server.client()
    daemon = Daemon.write(tmp_path, redis_server.url).start()
    # writes 500 records, then stays alive and idle
    victim = Producers.ring(rings_dir, 1, 500, first=n, close=False)
    producers = Producers.ring(rings_dir, n, count, pace=(500, 0.05))
    try:
        victim.start()
        wait_until(lambda: stream_record_count(client) == 500, 30,
                   "the victim's records delivered")
        (victim_ring,) = _ring_files(rings_dir)
        producers.start()
        wait_until(lambda: stream_record_count(client) > 2_500, 60, "the load to be flowing")
        os.truncate(victim_ring, 0)  # truncate -s 0
        quarantined = rings_dir / "quarantine" / victim_ring.name
        wait_until(quarantined.exists, 30, "the truncated ring quarantined")
        # A flusher killed by a signal anyway is restarted with its rings.
        os.kill(daemon.flusher_pids()[0], signal.SIGBUS)
        wait_until(lambda: daemon.metrics()["collector_daemon_flusher_restarts_total"] == 1,
                   30, "the flusher restarted")
        assert producers.join() == 0
        wait_until(lambda: _ring_files(rings_dir) == [], 60,
                   "the three rings drained and removed")
        daemon.check_running()
        seen = tally_stream(client)
        victims = sum(1 for s in range(500) if seen.pop((n, s), 0))
        got = account(seen, producer_ids(n, count))
        print(f"\ntruncated ring: quarantined; the three others: {got}; "
              f"victim's records delivered before the truncation={victims}/500")
        assert got.lost == 0 and got.unexpected == 0
        assert got.duplicated <= 1000  # at most the batch in flight of the flusher killed
        assert victims == 500
        metrics = daemon.metrics()
        assert metrics["collector_daemon_rings_quarantined_total"] == 1
        assert metrics["collector_daemon_flushers_alive"] == 2
        log = daemon.log_text()
        assert "its size changed from" in log  # why it was quarantined
        assert daemon.readyz()[0] == 200
        assert daemon.stop() == 0
    finally:
        victim.kill()
        producers.kill()
        daemon.close()

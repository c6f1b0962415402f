"""gunicorn (2 sync workers, --preload) serving examples/authz_app.py: one record per request.

Real processes throughout: gunicorn with examples/gunicorn.conf.py (the
collector hooks), a few hundred HTTP requests from 4 client threads, each
with a sequence-numbered ``X-Request-ID``.

- ``test_gunicorn_records_reach_redis_through_the_daemon``: the real
  ``collector-daemon --config`` drains the workers' rings into the
  ``redis_server`` fixture; the records are counted in the stream.
- ``test_gunicorn_rings_are_per_worker``: no daemon; after gunicorn stops
  the rings are read directly with ``ringbuf.RingReader``, which shows the
  ring-level facts (one ring per worker pid, none for the master, every
  ring closed by ``worker_exit``).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml

import ringbuf
from collector.testing import (
    Daemon,
    Gunicorn,
    RedisServer,
    in_threads,
    stream_records,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = 300

BODIES = [
    {"subject": "users:alice", "action": "read", "resource": "resources:articles:ladon"},
    {"subject": "users:bob", "action": "delete", "resource": "resources:secrets:db",
     "context": {"remoteIP": "10.0.0.7"}},
    {"subject": "users:editor-7", "action": "update", "resource": "resources:articles:42",
     "context": {"remoteIP": "192.168.3.4"}},
]


def start_gunicorn(workdir: Path, collector_yaml: Path) -> Gunicorn:
    """examples/authz_app.py under gunicorn with examples/gunicorn.conf.py (--preload)."""
    g = Gunicorn("examples.authz_app:app", log=workdir / "gunicorn.log", workers=2,
                 config=ROOT / "examples/gunicorn.conf.py", cwd=ROOT,
                 args=["--preload", "--log-level", "info"],
                 env={"COLLECTOR_CONFIG": str(collector_yaml), "PYTHONPATH": str(ROOT)})
    return g.start(timeout=30)


def send_requests(port: int, ids: range, threads: int = 4) -> dict[str, dict[str, Any]]:
    """POST one decision per i in ids with X-Request-ID req-<i>; return the answers by id."""
    answers: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in ids[k::threads]:
            body = json.dumps(BODIES[i % len(BODIES)]).encode()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/v1/authz", body=body, headers={
                "Content-Type": "application/json", "X-Request-ID": f"req-{i}"})
            resp = conn.getresponse()
            data = json.loads(resp.read())
            conn.close()
            assert resp.status == 200, data
            with lock:
                answers[f"req-{i}"] = data

    in_threads(worker, threads)
    return answers


def check_records(records: list[dict[str, Any]], answers: dict[str, dict[str, Any]],
                  worker_pids: set[int]) -> None:
    ids = Counter(r["request_id"] for r in records)
    lost = [f"req-{i}" for i in range(REQUESTS) if f"req-{i}" not in ids]
    dup = {k: c for k, c in ids.items() if c > 1}
    unexpected = [k for k in ids if k not in answers]
    assert (len(lost), len(dup), len(unexpected)) == (0, 0, 0), (
        f"lost={len(lost)} duplicated={len(dup)} unexpected={len(unexpected)}")
    for r in records:
        i = int(r["request_id"].removeprefix("req-"))
        allowed = answers[r["request_id"]]["allowed"]
        assert r["effect"] == ("allow" if allowed else "deny")
        assert json.loads(r["request"]) == BODIES[i % len(BODIES)]
        assert isinstance(r["latency_us"], int) and r["conclusion"]
        json.loads(r["policies"])
        json.loads(r["deciders"])
    pids = {r["pid"] for r in records}
    assert pids <= worker_pids
    assert len(pids) >= 2, f"records came from {pids} only, expected at least two workers"


@pytest.fixture
def collector_yaml(tmp_path: Path, rings_dir: Path) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump({"rings_dir": str(rings_dir),
                                    "ring_capacity_bytes": 1 << 20}))
    return path


@pytest.fixture
def gunicorn_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Gunicorn] = []

    def make(collector_yaml: Path) -> Gunicorn:
        g = start_gunicorn(tmp_path, collector_yaml)
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop(30)
        g.close()


def test_gunicorn_rings_are_per_worker(rings_dir: Path, collector_yaml: Path,
                                       gunicorn_factory: Any) -> None:
    """Also kills one worker with SIGKILL halfway: its records stay in its ring."""
    g = gunicorn_factory(collector_yaml)
    first = g.worker_pids()
    assert len(first) == 2
    # post_fork opened each worker's ring before any request
    wait_until(lambda: len(list(rings_dir.glob("*.ring"))) == 2, 10, "two worker rings")
    half = REQUESTS // 2
    answers = send_requests(g.port, range(half))
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in g.worker_pids() and len(g.worker_pids()) == 2, 30,
               "gunicorn to replace the killed worker")
    # child_exit ran in the master and reported the ring it leaves to the daemon
    wait_until(lambda: f"worker_pid={victim}" in g.log_text(), 10,
               "the child_exit hook's report")
    later = g.worker_pids()
    answers.update(send_requests(g.port, range(half, REQUESTS)))
    assert len(answers) == REQUESTS
    assert g.proc is not None
    master = g.proc.pid
    g.stop(30)
    records: list[dict[str, Any]] = []
    closed: dict[int, bool] = {}
    for path in sorted(rings_dir.glob("*.ring")):
        with ringbuf.RingReader.open(path) as r:
            st = r.stats()
            assert st.dropped == 0
            closed[st.producer_pid] = st.closed
            while batch := r.read_batch(1000):
                records.extend(msgpack.unpackb(b) for b in batch)
                r.commit()
    workers = first | later
    assert set(closed) == workers  # one ring per worker, none for the master
    assert master not in closed
    # worker_exit closed the rings of the workers that exited; the killed one's is
    # left unclosed, for the daemon to drain once it sees the producer is dead
    assert closed == {pid: pid != victim for pid in workers}
    check_records(records, answers, workers)
    assert victim in {r["pid"] for r in records}  # what the killed worker recorded arrived


def records_in_stream(client: Any) -> list[dict[str, Any]]:
    return [rec.data for rec in stream_records(client)]


def test_gunicorn_records_reach_redis_through_the_daemon(
        tmp_path: Path, rings_dir: Path, redis_server: RedisServer,
        gunicorn_factory: Any) -> None:
    daemon = Daemon.write(tmp_path, redis_server.url, base={}, ring_capacity_bytes=1 << 20,
                          pool_size=1, flush_interval_ms=20, scan_interval_ms=50)
    try:
        daemon.start(timeout=30)
        g = gunicorn_factory(daemon.config)
        workers = g.worker_pids()
        answers = send_requests(g.port, range(REQUESTS))
        client = redis_server.client()
        wait_until(lambda: len(records_in_stream(client)) >= REQUESTS, 60,
                   f"{REQUESTS} records in the stream")
        g.stop(30)
        check_records(records_in_stream(client), answers, workers)
        # the workers closed their rings; the daemon drains and removes them
        wait_until(lambda: not list(rings_dir.glob("*.ring")), 30,
                   "the daemon to remove the closed rings")
        assert daemon.stop(30) == 0
        check_records(records_in_stream(client), answers, workers)
    finally:
        daemon.close()


def test_install_adds_and_chains_the_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    import weakref

    from collector import _client
    from collector import gunicorn as hooks

    # isolate from clients other tests of this process may still hold
    monkeypatch.setattr(_client, "_LIVE", weakref.WeakSet())
    calls: list[str] = []

    def post_fork(server: Any, worker: Any) -> None:
        calls.append("user post_fork")

    def worker_exit(server: Any, worker: Any) -> None:
        calls.append("user worker_exit")

    ns: dict[str, Any] = {"post_fork": post_fork, "worker_exit": worker_exit}
    hooks.install(ns)
    assert ns["child_exit"] is hooks.child_exit
    assert ns["post_fork"] is not post_fork and ns["worker_exit"] is not worker_exit
    ns["post_fork"](None, None)
    ns["worker_exit"](None, None)
    assert calls == ["user post_fork", "user worker_exit"]
    fresh: dict[str, Any] = {}
    hooks.install(fresh)
    assert fresh == {"post_fork": hooks.post_fork, "worker_exit": hooks.worker_exit,
                     "child_exit": hooks.child_exit,
                     "post_worker_init": hooks.post_worker_init}
    # a post_worker_init of the user's runs after ours (which refuses block in event loops)
    calls.clear()
    mine: dict[str, Any] = {"post_worker_init": lambda worker: calls.append("user init")}
    hooks.install(mine)
    mine["post_worker_init"](object())  # a sync-like worker: ours lets it through
    assert calls == ["user init"]

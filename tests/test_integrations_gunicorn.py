"""The three examples under gunicorn, every worker class, recycling and a timeout kill.

Real processes: the pytest plugin's ``collector_pipeline`` (collector-daemon
with its embedded redis-server, collector-pump into a JSON Lines file
sink), then per case one gunicorn running an example from ``examples/``
with its own ``gunicorn.conf.py`` (the collector hooks) and the
middleware, plus the test-only ``/_test/stuck`` route of
``tests/_example_apps.py``. Every request carries an ``X-Request-ID``; the
records are counted at the sink by that id.

Each case, in one gunicorn run:

1. load from 4 client threads (new connection per request) over the
   example's routes, a streamed one included, with ``--max-requests 20
   --max-requests-jitter 10`` and 2 workers, so workers are recycled
   several times under load;
2. once every record so far is at the sink and a recycled worker exited,
   one request to
   ``/_test/stuck``: it records a marker with ``record_hit`` and then holds
   the GIL with every signal blocked, so the arbiter's ``--timeout 3``
   ends that worker with SIGKILL mid-request (checked in gunicorn's log);
3. more load, served by the replacement workers;
4. SIGTERM to gunicorn.

Then: every request that got its answer has exactly one record at the
sink, nothing unexpected arrived (a request that failed at the client,
e.g. reset by a recycling worker, may or may not have a record: it is
reported, never counted as lost), the marker the killed worker accepted
arrived and the stuck request itself left no record, at least two
workers more than the first two booted (recycling), the daemon reports 0
dropped records, and no ring of any of this run's workers is left in the
rings directory.

The matrix (what differs between worker classes is how requests share a
process, and so the ring: one at a time, threads behind the client's lock,
greenlets, one event loop; preload decides whether the app, and with it
the middleware, is created in the master before the fork):

===========================  ==========  =================================  =======
case                         framework   worker class                       preload
===========================  ==========  =================================  =======
flask-sync-preload           Flask       sync                               yes
flask-gthread                Flask       gthread (4 threads, one ring)      no
flask-gevent-preload         Flask       gevent                             yes
django-gthread-preload       Django      gthread, WSGI (shop.wsgi)          yes
django-uvicorn               Django      uvicorn.workers.UvicornWorker,     no
                                         ASGI (shop.asgi)
fastapi-uvicorn-preload      FastAPI     uvicorn.workers.UvicornWorker      yes
===========================  ==========  =================================  =======

So every worker class runs with at least one framework and every framework
with at least one worker class, each WSGI worker class with Flask, both of
Django's handlers, and preload both on and off for threads and for the
event loop; recycling and the timeout kill run in every case because
their mechanics differ per worker class (the arbiter's notify loop, the
worker's own max-requests exit). Flask under an ASGI worker and FastAPI
under a WSGI worker do not exist. A full product (3 frameworks x 4 worker
classes x preload) would be 16 valid gunicorn runs of ~8 s; these 6 take
about a minute on 2 cores. ``test_block_policy_is_refused_in_uvicorn_workers``
adds one failed boot.
"""

from __future__ import annotations

import http.client
import os
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.pytest_plugin import Collected, Pipeline
from collector.testing import Gunicorn, in_threads, wait_until

from ._example_apps import STUCK_PATH

ROOT = Path(__file__).resolve().parent.parent
DJANGO_DIR = ROOT / "examples" / "django_project"
UVICORN = "uvicorn.workers.UvicornWorker"


@dataclass(frozen=True)
class Case:
    name: str
    framework: str
    worker_class: str
    preload: bool

    @property
    def config(self) -> Path:
        sub = {"flask": "flask_app", "django": "django_project", "fastapi": "fastapi_app"}
        return ROOT / "examples" / sub[self.framework] / "gunicorn.conf.py"

    @property
    def app(self) -> str:
        if self.framework == "flask":
            return "tests._example_apps:flask_app()"
        if self.framework == "fastapi":
            return "tests._example_apps:fastapi_app()"
        return "shop.asgi:application" if self.worker_class == UVICORN else "shop.wsgi:application"

    def routes(self, i: int) -> tuple[str, str, bytes | None]:
        """(method, path, body) of request number i."""
        k = i % 4
        if self.framework == "fastapi":
            return [("GET", f"/items/{i}", None), ("GET", f"/stock/{i}", None),
                    ("POST", "/orders", b'{"items": ["a", "b"]}'),
                    ("GET", "/report?rows=50", None)][k]
        return [("GET", f"/orders/{i}", None), ("GET", "/report?rows=50", None),
                ("POST", "/orders", b'{"items": ["a", "b"]}'),
                ("GET", f"/orders/{i}", None)][k]


ROUTES = {
    "flask": {"/orders/<int:order_id>", "/orders", "/report"},
    "django": {"/orders/<int:order_id>", "/orders", "/report"},
    "fastapi": {"/items/{item_id}", "/stock/{item_id}", "/orders", "/report"},
}

CASES = [
    Case("flask-sync-preload", "flask", "sync", True),
    Case("flask-gthread", "flask", "gthread", False),
    Case("flask-gevent-preload", "flask", "gevent", True),
    Case("django-gthread-preload", "django", "gthread", True),
    Case("django-uvicorn", "django", UVICORN, False),
    Case("fastapi-uvicorn-preload", "fastapi", UVICORN, True),
]


class CaseServer(Gunicorn):
    """One gunicorn master running a case, logging to a file."""

    def __init__(self, case: Case, pipeline: Pipeline, workdir: Path,
                 extra_env: dict[str, str] | None = None, wait: bool = True) -> None:
        self.case = case
        env = {"COLLECTOR_CONFIG": str(pipeline.config_path),
               "PYTHONPATH": os.pathsep.join([str(ROOT), str(DJANGO_DIR)])}
        if case.framework == "django":
            env["DJANGO_SETTINGS_MODULE"] = "tests._example_django_settings"
        env.update(extra_env or {})
        args = ["-k", case.worker_class, "--threads", "4",
                "--timeout", "3", "--graceful-timeout", "10", "--max-requests", "20",
                "--max-requests-jitter", "10", "--log-level", "info"]
        if case.preload:
            args.append("--preload")
        super().__init__(case.app, log=workdir / f"gunicorn-{case.name}.log", workers=2,
                         config=case.config, args=args, env=env, cwd=ROOT)
        self.start(wait=False)
        if wait:  # /healthz only: workers come and go (--max-requests)
            self.wait_up(60)

    def booted(self) -> list[int]:
        return [int(p) for p in re.findall(r"Booting worker with pid: (\d+)", self.log_text())]

    def stop(self, timeout: float = 40.0) -> int | None:
        return super().stop(timeout)


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = {"Connection": "close", **(headers or {})}
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Load:
    """Requests sent in one case: answered ones, and ones that failed at the client."""

    answered: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, g: CaseServer, prefix: str, count: int, threads: int = 4) -> None:
        def client(k: int) -> None:
            for i in range(k, count, threads):
                rid = f"{prefix}-{i}"
                method, path, body = g.case.routes(i)
                try:
                    status, data = request(g.port, method, path, body, {"X-Request-ID": rid})
                except (OSError, http.client.HTTPException):
                    with self.lock:
                        self.failed.add(rid)  # e.g. reset by a worker leaving
                    continue
                assert status in (200, 201), (rid, status, data[:300])
                with self.lock:
                    self.answered.add(rid)

        in_threads(client, threads, timeout=180)


def case_records(collected: Collected, prefix: str) -> list[dict[str, Any]]:
    return [r for r in collected.records
            if isinstance(r.get("request_id"), str) and r["request_id"].startswith(prefix)]


def dropped_total(pipeline: Pipeline) -> float:
    return sum(v for k, v in pipeline.metrics().items()
               if k.startswith("collector_dropped_records"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_example_under_gunicorn(case: Case, collector_pipeline: Pipeline,
                                collected: Collected, tmp_path: Path) -> None:
    prefix = f"{case.name}-{os.getpid()}"
    dropped_before = dropped_total(collector_pipeline)
    g = CaseServer(case, collector_pipeline, tmp_path)
    load = Load()
    try:
        # 1. load with recycling
        load.run(g, f"{prefix}-a", 120)
        collected.wait_for(len(load.answered), 30,
                           where=lambda r: r.get("request_id") in load.answered)
        # a gevent worker notices its max_requests only at its next 1 s tick
        wait_until(lambda: "Worker exiting" in g.log_text(), 20,
                   "a worker recycled by max_requests to exit")
        # 2. a worker stuck mid-request, killed by the arbiter's timeout
        stuck_id = f"{prefix}-stuck"
        marker = f"{stuck_id}-accepted-before-kill"
        stuck_result: list[Any] = []

        def stuck() -> None:
            try:
                stuck_result.append(request(g.port, "GET", f"{STUCK_PATH}?marker={marker}",
                                            headers={"X-Request-ID": stuck_id}, timeout=60))
            except (OSError, http.client.HTTPException) as exc:
                stuck_result.append(exc)

        t = threading.Thread(target=stuck)
        t.start()
        t.join(60)
        assert stuck_result and isinstance(stuck_result[0], Exception), (
            f"the stuck request was answered: {stuck_result}")
        sigkill = re.compile(r"Worker \(pid:(\d+)\) was sent SIGKILL")
        wait_until(lambda: sigkill.search(g.log_text()), 15,
                   "gunicorn's log to report a worker killed with SIGKILL")
        log = g.log_text()
        victims = [int(p) for p in sigkill.findall(log)]
        assert "WORKER TIMEOUT" in log
        wait_until(g.up, 30, "gunicorn to serve again after the kill")
        # 3. more load on the replacement workers
        load.run(g, f"{prefix}-b", 80)
    finally:
        code = g.stop()
    assert code == 0, g.log_text()[-3000:]

    booted = g.booted()
    wait_until(lambda: len(case_records(collected, prefix)) >= len(load.answered) + 1, 30,
               "every answered request's record and the marker at the sink")
    records = case_records(collected, prefix)
    ids = Counter(r["request_id"] for r in records)
    lost = sorted(load.answered - set(ids))
    dup = {k: c for k, c in ids.items() if c > 1}
    unexpected = sorted(set(ids) - load.answered - load.failed - {marker})
    print(f"\n{case.name}: answered={len(load.answered)} failed_at_client={len(load.failed)} "
          f"(of them recorded: {len(load.failed & set(ids))}) at_sink={len(records)} "
          f"lost={len(lost)} duplicated={len(dup)} unexpected={len(unexpected)} "
          f"workers_booted={len(booted)} killed={victims}")
    assert (len(lost), len(dup), len(unexpected)) == (0, 0, 0), (lost[:5], dup, unexpected[:5])
    assert ids[marker] == 1, "the record the killed worker accepted did not arrive"
    assert stuck_id not in ids, "the stuck request was recorded: it was not killed mid-request"
    # recycled workers and the respawn after the kill
    assert re.search(r"Autorestarting worker|Maximum request limit", g.log_text())
    assert len(booted) >= 4, f"expected recycling and a respawn, workers booted: {booted}"
    assert set(victims) <= set(booted)
    assert len(load.failed) <= len(load.answered) // 10, load.failed

    # every record is complete and the routes are templates
    for r in records:
        if r["request_id"] == marker:
            continue
        assert r["status"] in (200, 201) and r["duration_us"] >= 0
        assert r["method"] in ("GET", "POST")
        assert r["route"] in ROUTES[case.framework], r
        assert r["client_addr"] == "127.0.0.1"
        assert r["response_bytes"] > 0
        if r["method"] == "POST":
            assert r["request_bytes"] == len(b'{"items": ["a", "b"]}') and r["items"] == 2
    # no ring left behind by any worker of this run; nothing dropped
    wait_until(lambda: not [s for s in collector_pipeline.rings()
                            if s.producer_pid in set(booted)], 30,
               "the daemon to remove every ring of this run's workers")
    assert dropped_total(collector_pipeline) == dropped_before


def test_fastapi_websockets_under_uvicorn(collector_pipeline: Pipeline, collected: Collected,
                                          tmp_path: Path) -> None:
    """One record per WebSocket connection through uvicorn's real websocket stack."""
    from websockets.sync.client import connect

    case = Case("fastapi-ws", "fastapi", UVICORN, False)
    g = CaseServer(case, collector_pipeline, tmp_path)
    try:
        for i in range(5):
            with connect(f"ws://127.0.0.1:{g.port}/ws/echo",
                         additional_headers={"X-Request-ID": f"ws-{os.getpid()}-{i}"}) as ws:
                for k in range(i + 1):
                    ws.send(f"hello {k}")
                    assert ws.recv(timeout=10) == f"hello {k}"
        got = collected.wait_for(5, 10, where=lambda r: str(r.get("request_id")).startswith(
            f"ws-{os.getpid()}-"))
    finally:
        g.stop()
    by_id = {r["request_id"]: r for r in got}
    for i in range(5):
        r = by_id[f"ws-{os.getpid()}-{i}"]
        assert (r["method"], r["route"], r["status"]) == ("WEBSOCKET", "/ws/echo", 101)
        sent = sum(len(f"hello {k}") for k in range(i + 1))
        assert r["request_bytes"] == sent and r["response_bytes"] == sent


def test_block_policy_is_refused_in_uvicorn_workers(collector_pipeline: Pipeline,
                                                    tmp_path: Path) -> None:
    """``full_policy: block`` in an event-loop worker: the worker refuses to boot, saying why."""
    cfg = yaml.safe_load(collector_pipeline.config_path.read_text())
    cfg["full_policy"] = "block"
    blocking = tmp_path / "collector-block.yaml"
    blocking.write_text(yaml.safe_dump(cfg))
    case = Case("fastapi-block", "fastapi", UVICORN, False)
    g = CaseServer(case, collector_pipeline, tmp_path,
                 extra_env={"COLLECTOR_CONFIG": str(blocking)}, wait=False)
    try:
        code = g.proc.wait(60)
    finally:
        g.stop()
    assert code != 0
    log = g.log_text()
    assert "full_policy: block cannot be used" in log, log[-3000:]
    assert "stalls every request of the worker" in log


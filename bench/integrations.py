"""``python -m bench integrations [--quick]``: the middlewares' cost per request.

For each framework, in one run and one process, the same request served
three ways: by the app without collector's middleware, with it, and
without it but with the handler calling ``Analytics.record_hit`` once with
the record the middleware would send (what users write by hand today).
Requests are called the way a server calls them (WSGI:
``app(environ, start_response)``, iterate, ``close()``; ASGI: ``await
app(scope, receive, send)`` on one event loop; Django through its own
``WSGIHandler`` and ``ASGIHandler``). The three are interleaved request by
request (in reversed order every other request), each request timed on its
own, so load on a shared machine hits all three alike; the figures are
medians of those times. The middleware's cost is *with - without*; the
bare ``record_hit`` is *by hand - without*: measured inside a request, with
the caches the framework leaves behind, where it costs several times its
tight-loop figure (``python -m bench record_hit``).

The records go into a real ring in a private directory, drained by the
benchmark every 1,000 requests (outside the timed calls); no daemon runs, so
the figures are the app process's own cost. Frameworks: a plain WSGI app,
Flask, Django under WSGI and under ASGI, a plain ASGI app, Starlette, FastAPI.
Django under ASGI runs its sync middleware and ``response.close()`` in
threads (asgiref): its requests cost ~1 ms with a spread far larger than the
middleware, whose figure there is noise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._integration_apps import FRAMEWORKS, Served

ROOT = Path(__file__).resolve().parent.parent


def _environ(path: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "bench",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "localhost", "HTTP_X_REQUEST_ID": "bench-0123456789",
        "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    return None


def _measure_wsgi(variants: tuple[Served, ...], n: int, drain: _Drain) -> list[list[int]]:
    lat: list[list[int]] = [[] for _ in variants]
    ns = time.perf_counter_ns
    order = list(enumerate(variants))
    for i in range(n):
        if i % 1000 == 0:
            drain()  # outside the timed calls, like a daemon on another core
            gc.collect()
        for k, (_, app, path) in order if i % 2 == 0 else order[::-1]:
            environ = _environ(path)
            t = ns()
            result = app(environ, _start_response)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()
            lat[k].append(ns() - t)
    return lat


def _measure_asgi(variants: tuple[Served, ...], n: int, drain: _Drain) -> list[list[int]]:
    lat: list[list[int]] = [[] for _ in variants]
    ns = time.perf_counter_ns
    headers = [(b"host", b"localhost"), (b"x-request-id", b"bench-0123456789")]
    order = list(enumerate(variants))

    async def send(message: dict[str, Any]) -> None:
        return None

    async def serve() -> None:
        never = asyncio.get_running_loop().create_future()  # no disconnect (keep-alive)

        def receiver() -> Callable[[], Any]:
            first = [True]

            async def receive() -> dict[str, Any]:
                if first[0]:
                    first[0] = False
                    return {"type": "http.request", "body": b"", "more_body": False}
                return await asyncio.shield(never)
            return receive

        for i in range(n):
            if i % 1000 == 0:
                drain()
                gc.collect()
            for k, (_, app, path) in order if i % 2 == 0 else order[::-1]:
                scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                         "method": "GET", "scheme": "http", "path": path,
                         "raw_path": path.encode(), "query_string": b"", "root_path": "",
                         "headers": headers, "client": ("127.0.0.1", 50000),
                         "server": ("127.0.0.1", 8000)}
                receive = receiver()
                t = ns()
                await app(scope, receive, send)
                lat[k].append(ns() - t)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(serve())
    finally:
        loop.close()
    return lat



class _Drain:
    """Empties the benchmark's ring now and then (what the daemon would do)."""

    def __init__(self, rings_dir: Path) -> None:
        self.rings_dir = rings_dir
        self.readers: dict[Path, Any] = {}
        self.count = 0

    def __call__(self) -> int:
        import ringbuf

        for path in self.rings_dir.glob("*.ring"):
            if path not in self.readers:
                self.readers[path] = ringbuf.RingReader.open(path)
        for reader in self.readers.values():
            while batch := reader.read_batch(100_000):
                self.count += len(batch)
                reader.commit()
        return self.count

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench integrations", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests (about 30 s)")
    ap.add_argument("--requests", type=int, default=None, help="requests per variant")
    ap.add_argument("--only", action="append", default=None, choices=sorted(FRAMEWORKS),
                    help="measure only this framework (repeatable)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    n = args.requests or (2000 if args.quick else 20_000)
    sys.path.insert(0, str(ROOT))

    from collector import Analytics

    work = Path(tempfile.mkdtemp(prefix="bench-integrations-",
                                 dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    rings = work / "rings"
    rings.mkdir(mode=0o700)
    analytics = Analytics({"rings_dir": str(rings), "ring_capacity_bytes": 1 << 26}).start()
    drain = _Drain(rings)
    results: dict[str, Any] = {"machine": {"python": platform.python_version(),
                                           "cpus": os.cpu_count(),
                                           "platform": platform.platform()},
                               "requests_per_variant": n, "frameworks": {}}
    try:
        names = args.only or list(FRAMEWORKS)
        benches = {name: FRAMEWORKS[name](analytics) for name in names}
        print(f"middleware cost per request: python {platform.python_version()}, "
              f"{os.cpu_count()} cpus, {n:,} requests per variant, interleaved")
        keys = ("without", "with", "by_hand")
        print(f"\n{'framework':<15} {'without':>10} {'with':>10} {'by hand':>10} "
              f"{'middleware':>11} {'record_hit':>11} {'with/':>7}")
        print(f"{'(median ns)':<15} {'':>10} {'middleware':>10} {'':>10} "
              f"{'':>11} {'':>11} {'without':>7}")
        for name, variants in benches.items():
            measure = _measure_wsgi if variants[0].kind == "wsgi" else _measure_asgi
            measure(variants, min(500, n), drain)  # warm up: imports, caches, the ring
            gc.disable()
            try:
                lat = measure(variants, n, drain)
            finally:
                gc.enable()
            med = {k: statistics.median(v) for k, v in zip(keys, lat, strict=True)}
            cost = med["with"] - med["without"]
            bare = med["by_hand"] - med["without"]
            row = {"without_ns": med["without"], "with_ns": med["with"],
                   "by_hand_ns": med["by_hand"], "middleware_ns": cost,
                   "record_hit_ns": bare, "ratio": med["with"] / med["without"]}
            results["frameworks"][name] = row
            print(f"{name:<15} {med['without']:>10,.0f} {med['with']:>10,.0f} "
                  f"{med['by_hand']:>10,.0f} {cost:>11,.0f} {bare:>11,.0f} "
                  f"{row['ratio']:>6.3f}x", flush=True)
        drain()
        print("\nmiddleware = with - without; record_hit = by hand - without (the same "
              "record, one\nrecord_hit in the handler: what users do without the middleware)")
        print(f"{drain.count:,} records went through the ring")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    finally:
        drain.close()
        analytics.stop()
        shutil.rmtree(work, ignore_errors=True)

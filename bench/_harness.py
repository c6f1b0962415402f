"""Shared helpers of ``bench compare`` and ``bench chaos``: real processes on free ports.

Everything here starts a real program (``redis-server``, ``collector-daemon``,
``collector-pump``, ``gunicorn``, ``wrk``) in a private working directory,
on loopback ports chosen free at start, and stops it again. Configs are
generated YAML files, the same way ``collector/demo.py`` does it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import psutil
import redis
import yaml

T = TypeVar("T")
BINDIR = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``cond`` until truthy; raise ``TimeoutError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}"
                               + (f" (last error: {last!r})" if last else ""))
        time.sleep(interval)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def _stop_popen(proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
    except ProcessLookupError:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.wait(10)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant (used only for processes we started)."""
    try:
        parent = psutil.Process(pid)
        procs = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGCONT)
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


# ---------------------------------------------------------------------------
# redis-server


class RedisProc:
    """A private ``redis-server`` on a free loopback port.

    ``persistence`` is ``"always"`` (append-only file, fsync before every
    reply), ``"everysec"`` (append-only file, fsync once a second) or
    ``"none"`` (no AOF, no RDB snapshots: a restart empties Redis).
    """

    def __init__(self, workdir: Path, persistence: str = "always",
                 port: int | None = None) -> None:
        if persistence not in ("always", "everysec", "none"):
            raise ValueError(f"persistence={persistence!r} must be always, everysec or none")
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH: run `sh .ci/setup` first")
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProc:
        aof = self.persistence != "none"
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.workdir), "--save", "",
            "--appendonly", "yes" if aof else "no",
            "--appendfsync", self.persistence if aof else "everysec",
            "--logfile", str(self.workdir / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.ping, 30, f"redis-server on port {self.port}")
        return self

    def client(self, **kw: Any) -> redis.Redis:
        return redis.Redis.from_url(self.url, **kw)

    def ping(self) -> bool:
        try:
            return bool(self.client(socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: what was not yet written to the append-only file is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, down_s: float = 0.0) -> None:
        self.kill()
        if down_s > 0:
            time.sleep(down_s)
        self.start()
        self.restarts += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.client(socket_timeout=2).shutdown(nosave=True)
            except redis.RedisError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


# ---------------------------------------------------------------------------
# collector-daemon and collector-pump


class Service:
    """A console script started with ``--config FILE``, health endpoints on ``port``."""

    def __init__(self, script: str, config_path: Path, port: int, log_path: Path,
                 ready_path: str, env: Mapping[str, str] | None = None) -> None:
        self.script = script
        self.config_path = config_path
        self.port = port
        self.log_path = log_path
        self.ready_path = ready_path
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self, wait_s: float = 60.0) -> Service:
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BINDIR / self.script), "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.starts += 1
        if wait_s:
            self.wait_ready(wait_s)
        return self

    def get(self, path: str) -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{self.port}/{path.lstrip('/')}")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.get(self.ready_path)[0] != 200:
            if self.proc is None or self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.script} exited with status "
                                   f"{self.proc.returncode if self.proc else None}; "
                                   f"{self.log_path} ends with:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {self.script} "
                                   f"/{self.ready_path} (log {self.log_path})")
            time.sleep(0.05)

    def children(self) -> list[psutil.Process]:
        if self.pid is None:
            return []
        try:
            return psutil.Process(self.pid).children(recursive=False)
        except psutil.NoSuchProcess:
            return []

    def worker_children(self) -> list[psutil.Process]:
        """Children that are Python worker processes (not an embedded redis-server)."""
        out = []
        for c in self.children():
            try:
                if "redis-server" in c.name():
                    continue
                if c.status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.NoSuchProcess:
                continue
            out.append(c)
        return out

    def signal(self, sig: int) -> None:
        if self.pid is not None:
            os.kill(self.pid, sig)

    def kill9(self) -> None:
        """SIGKILL the service and its worker processes (a crash of the whole program)."""
        if self.proc is not None and self.proc.poll() is None:
            kids = self.worker_children()
            self.proc.kill()
            self.proc.wait(10)
            for k in kids:
                try:
                    k.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(kids, timeout=10)

    def stop(self, timeout: float = 60.0) -> int | None:
        _stop_popen(self.proc, timeout)
        return self.proc.returncode if self.proc is not None else None

    def alive(self) -> bool:
        return self.pid is not None


def write_yaml(path: Path, data: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
    os.chmod(path, 0o600)
    return path


def daemon_config(workdir: Path, redis_url: str | None, **overrides: Any) -> tuple[Path, int]:
    """Write ``collector.yaml`` for daemon and clients; return (path, health port)."""
    port = free_port()
    cfg: dict[str, Any] = {
        "redis_url": redis_url,
        "rings_dir": str(workdir / "rings"),
        "runtime_dir": str(workdir / "run"),
        "health_address": f"127.0.0.1:{port}",
        "pool_size": 2,
        "flush_interval_ms": 50,
        "max_flush_interval_ms": 200,
        "scan_interval_ms": 200,
        "retry_max_ms": 1000,
    }
    cfg.update(overrides)
    return write_yaml(workdir / "collector.yaml", cfg), port


def pump_config(workdir: Path, redis_url: str, pumps: Mapping[str, Any],
                **overrides: Any) -> tuple[Path, int]:
    """Write ``pump.yaml``; return (path, health port)."""
    port = free_port()
    cfg: dict[str, Any] = {
        "redis_url": redis_url,
        "health_address": f"127.0.0.1:{port}",
        "pumps": dict(pumps),
    }
    cfg.update(overrides)
    return write_yaml(workdir / "pump.yaml", cfg), port


def daemon(workdir: Path, config: Path, port: int) -> Service:
    (workdir / "logs").mkdir(exist_ok=True)
    return Service("collector-daemon", config, port, workdir / "logs" / "daemon.log", "readyz")


def pump(workdir: Path, config: Path, port: int) -> Service:
    (workdir / "logs").mkdir(exist_ok=True)
    return Service("collector-pump", config, port, workdir / "logs" / "pump.log", "healthz")


# ---------------------------------------------------------------------------
# an HTTP endpoint for the pump's ``http`` sink, which can be told to fail


class HttpTarget:
    """A loopback HTTP server receiving the ``http`` sink's JSON batches.

    ``outage(True)`` makes it answer 503 to every POST until
    ``outage(False)``. Received records are handed to ``on_records``.
    """

    def __init__(self, on_records: Callable[[list[dict[str, Any]]], None]) -> None:
        self.on_records = on_records
        self.failing = False
        self.posts = 0
        self.rejected = 0
        self.bad = 0
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _reply(self, code: int, body: bytes = b"{}") -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._reply(503 if target.failing else 200)

            def do_HEAD(self) -> None:
                self.send_response(503 if target.failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                target.posts += 1
                if target.failing:
                    target.rejected += 1
                    self._reply(503, b'{"error": "outage injected by bench chaos"}')
                    return
                try:
                    records = parse_json_batch(body, self.headers.get("Content-Type", ""))
                except ValueError:
                    target.bad += 1
                    self._reply(400)
                    return
                target.on_records(records)
                self._reply(200)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                # a client killed mid-request (the pump under kill -9) is expected here
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="http-target")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ingest"

    def start(self) -> HttpTarget:
        self.thread.start()
        return self

    def outage(self, on: bool) -> None:
        self.failing = on

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def parse_json_batch(body: bytes, content_type: str = "") -> list[dict[str, Any]]:
    """Records of one POST: a JSON array, ``{"records": [...]}`` or JSON Lines."""
    text = body.decode()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(doc, dict):
        for key in ("records", "data", "items", "batch"):
            if isinstance(doc.get(key), list):
                doc = doc[key]
                break
        else:
            doc = [doc]
    if not isinstance(doc, list):
        raise ValueError("not a list of records")
    return [r for r in doc if isinstance(r, dict)]


# ---------------------------------------------------------------------------
# gunicorn and wrk


class Gunicorn:
    """``gunicorn`` with sync workers serving ``app`` (``module:callable``)."""

    def __init__(self, app: str, workers: int, env: Mapping[str, str], log_path: Path,
                 extra: list[str] | None = None) -> None:
        self.app = app
        self.workers = workers
        self.env = dict(env)
        self.log_path = log_path
        self.extra = extra or []
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Gunicorn:
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BINDIR / "gunicorn"), "-w", str(self.workers), "-k", "sync",
                 "-b", f"127.0.0.1:{self.port}", "--backlog", "2048",
                 "--log-level", "warning", *self.extra, self.app],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
                start_new_session=True)

        def up() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited; see {self.log_path}")
            return http_get(f"http://127.0.0.1:{self.port}/healthz")[0] in (200, 404)
        wait_for(up, 60, f"gunicorn on port {self.port} (log {self.log_path})")
        return self

    def worker_pids(self) -> list[int]:
        if self.proc is None:
            return []
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        _stop_popen(self.proc, 30)


_PACED_LUA = """
local pause = tonumber(os.getenv("WRK_PAUSE_MS") or "0")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("WRK_BODY") or "{}"
function delay()
  return pause
end
"""


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, *, duration_s: float, connections: int, threads: int, body: str,
            pause_ms: float = 0.0, workdir: Path) -> dict[str, float]:
    """Run ``wrk --latency`` POSTing ``body``; pause ``pause_ms`` per connection between
    requests (wrk measures latency from the write, so the pause is not counted)."""
    script = workdir / "wrk_paced.lua"
    script.write_text(_PACED_LUA)
    env = {**os.environ, "WRK_PAUSE_MS": str(int(pause_ms)), "WRK_BODY": body}
    out = subprocess.run(
        ["wrk", "--latency", "-t", str(threads), "-c", str(connections),
         "-d", f"{max(1, round(duration_s))}s", "-s", str(script), url],
        capture_output=True, text=True, env=env, timeout=duration_s + 60, check=False)
    return parse_wrk(out.stdout + out.stderr)


def parse_wrk(text: str) -> dict[str, float]:
    res: dict[str, float] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{text}")
    res["rps"] = float(m.group(1))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        if m:
            res[f"p{pct}_ms"] = _ms(m.group(1), m.group(2))
    m = re.search(r"(\d+) requests in", text)
    res["requests"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    res["non2xx"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    res["socket_errors"] = float(sum(int(g) for g in m.groups())) if m else 0.0
    return res


# ---------------------------------------------------------------------------
# Redis stream helpers (format: collector/common/stream.py)


def stream_record_count(client: redis.Redis, keys: list[str]) -> int:
    """Records held in the stream shards (sum of every entry's ``n`` field)."""
    total = 0
    for key in keys:
        start = "-"
        while True:
            entries = client.xrange(key, min=start, max="+", count=1000)
            if not entries:
                break
            total += sum(int(fields.get(b"n", b"0")) for _eid, fields in entries)
            last = entries[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else last)
    return total


def _id_tuple(value: Any) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else str(value)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def group_lag(client: redis.Redis, keys: list[str]) -> dict[str, int]:
    """Per consumer group: entries pending (unacknowledged) plus, when the group has
    not yet been given the stream's last entry, the entries it has still to read.

    XINFO's ``lag`` is not trusted on its own: after a restart of Redis from its
    append-only file (and trimming) it can stay far above zero for a group that
    has read and acknowledged everything (seen here: lag 1784, pending 0,
    last-delivered-id equal to the stream's last-generated-id). A group counts as
    caught up when nothing is pending and its last-delivered-id has reached the
    stream's last-generated-id.
    """
    out: dict[str, int] = {}
    for key in keys:
        try:
            groups = client.xinfo_groups(key)
            last_generated = _id_tuple(client.xinfo_stream(key)["last-generated-id"])
        except redis.ResponseError:
            continue
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else str(g["name"])
            pending = int(g.get("pending") or 0)
            behind = 0
            if _id_tuple(g["last-delivered-id"]) < last_generated:
                behind = max(1, int(g.get("lag") or 0))
            out[name] = out.get(name, 0) + pending + behind
    return out


def run_in_child(target: Callable[..., None], *args: Any, timeout: float = 300) -> dict[str, Any]:
    """Run ``target(*args, conn)`` in a spawned process; return what it sent on ``conn``."""
    ctx = mp.get_context("spawn")
    rx, tx = ctx.Pipe(duplex=False)
    p = ctx.Process(target=target, args=(*args, tx))
    p.start()
    try:
        if not rx.poll(timeout):
            raise TimeoutError(f"{target.__name__}{args[:1]} gave no result in {timeout}s")
        res = rx.recv()
    finally:
        p.join(60)
        if p.is_alive():
            p.kill()
            p.join()
    if "error" in res:
        raise RuntimeError(f"{target.__name__} {args[0]}: {res['error']}")
    return res

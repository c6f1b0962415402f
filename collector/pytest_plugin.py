"""pytest plugin (entry point ``pytest11: collector``): assert on what your app recorded.

Installed with ``collector``; its fixtures cost nothing until a test asks
for one. ::

    def test_order_is_recorded(client, collected):          # client: your app's test client
        client.get("/orders/7", headers={"X-Request-ID": "t-1"})
        [record] = collected.wait_for(1, timeout_s=5)
        assert record["route"] == "/orders/<int:order_id>" and record["status"] == 200

``collector_pipeline`` (session scope)
    The real path, private to the test session: ``collector-daemon`` with
    its embedded ``redis-server`` (unix socket, append-only file, all in a
    0700 temporary directory) draining a private rings directory, and
    ``collector-pump`` writing every record into a JSON Lines file sink.
    An app in a subprocess records into it with ``pipeline.env`` (its
    ``COLLECTOR_CONFIG``: a gunicorn you start). At the end both are
    stopped with SIGTERM (the daemon drains every ring first).
``collected`` (function scope)
    A :class:`Collected` view of the records the sink received since the
    test started. ``collected.wait_for(n, timeout_s=5, where=...)`` waits
    until ``n`` matching records arrived and returns them;
    ``collected.records`` is what arrived so far. During the test
    ``COLLECTOR_CONFIG`` names the pipeline's config, so
    ``Analytics.from_config()`` and the middlewares' shared client
    (:func:`collector.integrations.default_analytics`, made anew for the
    test) record into it; other tests of the session are left alone.

The pipeline is shared by the session, so a record a previous test left
in flight can still arrive during the next one: give each test's requests
their own ids (``X-Request-ID``, read into ``request_id`` by default) and
filter with ``where=``. Needs ``redis-server`` on ``PATH``. Each record in
the sink carries its stable id under ``_id`` (``<ring id>:<sequence>``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

__all__ = ["Collected", "Pipeline"]

Record = dict[str, Any]

_DAEMON = "import sys; from collector.daemon.cli import main; sys.argv[0] = 'collector-daemon'; " \
          "main()"
_PUMP = "import sys; from pump.cli import main; sys.argv[0] = 'collector-pump'; main()"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class Pipeline:
    """A private daemon + embedded Redis + pump with a file sink; see the module doc.

    ``Pipeline(workdir).start()`` ... ``stop()``; usable outside pytest too.
    ``collector`` are extra keys for ``collector.yaml`` (the daemon and the
    app clients), ``pump`` extra top-level keys for the pump's config.
    """

    def __init__(self, workdir: Path, *, collector: dict[str, Any] | None = None,
                 pump: dict[str, Any] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        # unix socket paths are short (108 bytes): the runtime dir gets its own
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="collector-run-"))
        self.rings_dir = self.workdir / "rings"
        self.rings_dir.mkdir(mode=0o700, exist_ok=True)
        self.sink_path = self.workdir / "sink" / "records.jsonl"
        self.daemon_address = f"127.0.0.1:{_free_port()}"
        self.pump_address = f"127.0.0.1:{_free_port()}"
        self.config_path = self.workdir / "collector.yaml"
        cfg: dict[str, Any] = {
            "rings_dir": str(self.rings_dir), "runtime_dir": str(self.runtime_dir),
            "health_address": self.daemon_address, "pool_size": 1,
            "ring_capacity_bytes": 4 << 20, "flush_interval_ms": 20,
            "max_flush_interval_ms": 100, "scan_interval_ms": 50,
            "retry_initial_ms": 20, "retry_max_ms": 500, "shutdown_timeout_s": 20,
        }
        cfg.update(collector or {})
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.pump_config_path = self.workdir / "pump.yaml"
        pcfg: dict[str, Any] = {
            "redis_url": f"unix://{self.runtime_dir / 'redis.sock'}",
            "health_address": self.pump_address, "read_block_s": 0.2,
            "retry_initial_ms": 20, "retry_max_ms": 500,
            "pumps": {"file": {"type": "file", "workers": 1,
                               "meta": {"path": str(self.sink_path), "format": "jsonl",
                                        "fsync": "never"}}},
        }
        pcfg.update(pump or {})
        self.pump_config_path.write_text(yaml.safe_dump(pcfg))
        self.daemon: subprocess.Popen[bytes] | None = None
        self.pump: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self._partial = b""
        self._records: list[Record] = []

    @property
    def env(self) -> dict[str, str]:
        """``os.environ`` for an app subprocess recording into this pipeline."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
        env["COLLECTOR_CONFIG"] = str(self.config_path)
        return env

    def _spawn(self, code: str, config: Path, log_name: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / log_name, "ab") as log:
            return subprocess.Popen([sys.executable, "-c", code, "--config", str(config)],
                                    stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=self.workdir)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.workdir / name
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def _wait_ready(self, proc: subprocess.Popen[bytes], url: str, what: str,
                    log_name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while _status(url) != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n"
                                   + self.log_tail(log_name))
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout_s:.0f}s:\n"
                                   + self.log_tail(log_name))
            time.sleep(0.05)

    def start(self, timeout_s: float = 60.0) -> Pipeline:
        if shutil.which("redis-server") is None:
            raise RuntimeError("the collector pipeline needs redis-server on PATH "
                               "(Debian: apt-get install redis-server)")
        self.daemon = self._spawn(_DAEMON, self.config_path, "daemon.log")
        self._wait_ready(self.daemon, f"http://{self.daemon_address}/readyz",
                         "collector-daemon", "daemon.log", timeout_s)
        self.pump = self._spawn(_PUMP, self.pump_config_path, "pump.log")
        self._wait_ready(self.pump, f"http://{self.pump_address}/readyz",
                         "collector-pump", "pump.log", timeout_s)
        return self

    def check_running(self) -> None:
        for proc, name, log in ((self.daemon, "collector-daemon", "daemon.log"),
                                (self.pump, "collector-pump", "pump.log")):
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n"
                                     + self.log_tail(log))

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM the pump (it finishes its batch), then the daemon (it drains every ring
        into Redis, whose append-only file keeps them); idempotent."""
        for proc in (self.pump, self.daemon):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    # -- the sink ------------------------------------------------------------
    def delivered(self) -> list[Record]:
        """Every record in the sink so far, in arrival order (complete lines only)."""
        if self.sink_path.exists():
            with open(self.sink_path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
            self._offset += len(data)
            data = self._partial + data
            lines = data.split(b"\n")
            self._partial = lines.pop()
            self._records.extend(json.loads(line) for line in lines if line)
        return self._records

    def metrics(self) -> dict[str, float]:
        """The daemon's ``/metrics`` samples as ``{"name{labels}": value}``."""
        with urllib.request.urlopen(f"http://{self.daemon_address}/metrics", timeout=3) as r:
            body = r.read().decode()
        out: dict[str, float] = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def rings(self) -> list[Any]:
        """``ringbuf.RingStats`` of the rings now in the rings directory."""
        import ringbuf

        return list(ringbuf.discover(self.rings_dir))


class Collected:
    """The records a :class:`Pipeline` delivered since this view was made."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._start = len(pipeline.delivered())

    @property
    def records(self) -> list[Record]:
        return self.pipeline.delivered()[self._start:]

    def wait_for(self, n: int, timeout_s: float = 5.0,
                 where: Callable[[Record], bool] | None = None) -> list[Record]:
        """Wait until ``n`` records (matching ``where``) arrived; return all that match.

        Fails the test (``AssertionError``) after ``timeout_s`` with what did arrive.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            got = [r for r in self.records if where is None or where(r)]
            if len(got) >= n:
                return got
            self.pipeline.check_running()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {n} records at the sink within {timeout_s:g}s, got "
                    f"{len(got)} (of {len(self.records)} delivered since the test started)")
            time.sleep(0.02)


@pytest.fixture(scope="session")
def collector_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """A private daemon + embedded Redis + pump with a file sink for the session."""
    pipeline = Pipeline(tmp_path_factory.mktemp("collector-pipeline"))
    try:
        yield pipeline.start()
    finally:
        pipeline.stop()


@pytest.fixture
def collected(collector_pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[Collected]:
    """The records delivered since this test started; ``wait_for(n, timeout_s=5)``.

    For the test's duration ``COLLECTOR_CONFIG`` names the pipeline's config
    and the middlewares' shared client is made anew from it; at the end that
    client is stopped (its ring closed: the daemon drains and removes it).
    """
    from .integrations import reset_default_analytics

    monkeypatch.setenv("COLLECTOR_CONFIG", str(collector_pipeline.config_path))
    reset_default_analytics()
    try:
        yield Collected(collector_pipeline)
    finally:
        reset_default_analytics()

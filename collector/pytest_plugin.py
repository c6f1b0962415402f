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
    stopped with SIGTERM (the pump first, then the daemon,
    which drains every ring into Redis).
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
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from . import testing as kit  # its modules load on first use, not with the plugin

__all__ = ["Collected", "Pipeline"]

Record = dict[str, Any]

# The daemon of the pipeline: one flusher, short intervals (a test waits
# milliseconds for a record), rings of 4 MiB.
_DAEMON_SETTINGS: dict[str, Any] = {
    "pool_size": 1, "ring_capacity_bytes": 4 << 20, "flush_interval_ms": 20,
    "max_flush_interval_ms": 100, "scan_interval_ms": 50,
    "retry_initial_ms": 20, "retry_max_ms": 500, "shutdown_timeout_s": 20,
}
_PUMP_SETTINGS: dict[str, Any] = {"read_block_s": 0.2, "retry_initial_ms": 20,
                                  "retry_max_ms": 500}


class Pipeline:
    """A private daemon + embedded Redis + pump with a file sink; see the module doc.

    ``Pipeline(workdir).start()`` ... ``stop()``; usable outside pytest too.
    ``collector`` are extra keys for ``collector.yaml`` (the daemon and the
    app clients), ``pump`` extra top-level keys for the pump's config.
    ``daemon`` and ``pump`` are their :class:`collector.testing.Daemon` and
    :class:`collector.testing.Pump` launchers.
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
        env = {"COLLECTOR_CONFIG": str(self.workdir / "collector.yaml")}  # as an app's
        self.daemon = kit.Daemon.write(self.workdir, None, base=_DAEMON_SETTINGS,
                                   log=self.workdir / "daemon.log", env=env,
                                       **{"runtime_dir": str(self.runtime_dir),
                                          **(collector or {})})
        extra = dict(pump or {})
        redis_url = extra.pop("redis_url", f"unix://{self.runtime_dir / 'redis.sock'}")
        sinks = extra.pop("pumps", {"file": {"type": "file", "workers": 1, "meta": {
            "path": str(self.sink_path), "format": "jsonl", "fsync": "never"}}})
        self.pump = kit.Pump.write(self.workdir, redis_url, sinks, base=_PUMP_SETTINGS,
                               log=self.workdir / "pump.log", env=env, **extra)
        self.config_path = self.daemon.config
        self.pump_config_path = self.pump.config
        self.daemon_address = self.daemon.address
        self.pump_address = self.pump.address
        self._offset = 0
        self._partial = b""
        self._records: list[Record] = []

    @property
    def env(self) -> dict[str, str]:
        """``os.environ`` for an app subprocess recording into this pipeline."""
        return kit.clean_environ({"COLLECTOR_CONFIG": str(self.config_path)})

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.workdir / name
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def start(self, timeout_s: float = 60.0) -> Pipeline:
        """Start the daemon, then the pump; return once both answer ``/readyz`` with 200."""
        if shutil.which("redis-server") is None:
            raise RuntimeError("the collector pipeline needs redis-server on PATH "
                               "(Debian: apt-get install redis-server)")
        self.daemon.start(timeout=timeout_s)
        self.pump.start(timeout=timeout_s)
        kit.wait_until(self.pump.ready, timeout_s, f"collector-pump /readyz (log {self.pump.log})",
                   interval=0.05)
        return self

    def check_running(self) -> None:
        """``AssertionError`` with the end of its log if the daemon or the pump exited."""
        for service in (self.daemon, self.pump):
            if service.proc is not None:
                service.check_running()

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM the pump (it finishes its batch), then the daemon (it drains every ring
        into Redis, whose append-only file keeps them); idempotent."""
        for service in (self.pump, self.daemon):
            service.stop(timeout_s)
            service.close()
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
        return self.daemon.metrics()

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
        def matching() -> list[Record]:
            return [r for r in self.records if where is None or where(r)]

        def enough() -> list[Record] | None:
            self.pipeline.check_running()  # AssertionError at once if one exited
            got = matching()
            return got if len(got) >= n else None

        if n <= 0:
            return matching()
        try:
            return kit.wait_until(enough, timeout_s, f"{n} records at the sink")
        except kit.WaitTimeout:
            got = matching()
            raise AssertionError(
                f"expected {n} records at the sink within {timeout_s:g}s, got "
                f"{len(got)} (of {len(self.records)} delivered since the test started)"
            ) from None


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

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.testing import InfluxServer, KafkaBroker, RedisServer


@pytest.fixture
def rings_dir(tmp_path: Path) -> Path:
    d = tmp_path / "rings"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture(autouse=True)
def _private_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own ``$XDG_STATE_HOME``: a pump whose config names no
    ``spool_dir`` spools under it (``pump.config.default_spool_dir``), so no test
    writes into the machine's ``~/.local/state`` or shares a spool (and its lock)
    with another run."""
    state = tmp_path / "xdg-state"
    state.mkdir(mode=0o700, exist_ok=True)
    monkeypatch.setenv("XDG_STATE_HOME", str(state))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free port, append-only file fsynced on every write
    (tests kill it and count by id what survived: ``everysec`` would lose up to a
    second of acknowledged writes, which is Redis's promise, not ours); killed
    afterwards."""
    server = RedisServer(tmp_path / "redis", appendfsync="always").start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def kafka_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A tansu broker (memory storage) on a free port; killed afterwards."""
    broker = KafkaBroker(tmp_path / "kafka").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def influx_server(tmp_path: Path) -> Iterator[InfluxServer]:
    """A private influxd (InfluxDB 1.x, authentication off) on free ports; stopped afterwards."""
    server = InfluxServer(tmp_path / "influx").start()
    try:
        yield server
    finally:
        server.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failure: every service must be there."""
    if os.environ.get("CI"):
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        skipped = reporter.stats.get("skipped", []) if reporter else []
        if skipped and session.exitstatus == 0:
            session.exitstatus = 1
            if reporter:
                reporter.write_line(
                    f"CI: {len(skipped)} test(s) were skipped; every service must be "
                    "available in CI, so this run fails.", red=True)


@pytest.fixture
def ring(rings_dir: Path) -> Iterator[Any]:
    """A private client (``tests._middleware.Ring``) and what it wrote, read back."""
    from tests._middleware import Ring

    r = Ring(rings_dir)
    yield r
    r.analytics.stop()


@pytest.fixture(scope="session")
def iam_peer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go peer of the iam tests (``tests/_iam.py``), built once per session."""
    from tests._iam import build_iam_peer

    return build_iam_peer(tmp_path_factory)


@pytest.fixture
def table(request: pytest.FixtureRequest) -> Iterator[str]:
    """A unique PostgreSQL table name for the test (named after its module), dropped
    afterwards; skipped (a failure in CI) when PostgreSQL is not reachable."""
    import psycopg

    from collector.testing import drop_tables, pg_dsn, unique_table

    try:
        with psycopg.connect(pg_dsn(), connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {pg_dsn()!r} is not reachable: {exc}")
    name = unique_table(request.module.__name__.rpartition(".")[2].removeprefix("test_"))
    try:
        yield name
    finally:
        drop_tables(name)

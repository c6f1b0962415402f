"""A pytest-benchmark load test of the Flask example, analytics on and off.

    .venv/bin/python -m pytest examples/test_load.py

Both benchmarks drive ``GET /orders/<id>`` through Flask's test client, the
way a user's load test would: once with collector's middleware (every
request recorded into a ring, drained by the ``collector_pipeline``
daemon), once with the same app without it. pytest-benchmark prints both
in one group; the ratio of the medians is printed in the terminal summary
(``examples/conftest.py``), never asserted: speed is measured, not tested.
With analytics on, the daemon, Redis and the pump run beside the test on
the same cores, as they would beside a real app. Afterwards every record
the middleware accepted is waited for at the sink.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from collector.pytest_plugin import Collected, Pipeline

GROUP = "flask example GET /orders/<id>"
_medians: dict[str, float] = {}


@pytest.fixture(scope="module")
def flask_app(collector_pipeline: Pipeline) -> Any:
    from examples.flask_app.app import app

    return app


def overhead_line() -> str | None:
    """The ratio of the medians, once both benchmarks ran (``conftest.py`` prints it)."""
    if not {"on", "off"} <= set(_medians):
        return None
    return (f"analytics overhead, Flask example through its test client: median "
            f"{_medians['on'] * 1e6:.1f} us on vs {_medians['off'] * 1e6:.1f} us off "
            f"= {_medians['on'] / _medians['off']:.3f}x")


def _run(benchmark: Any, app: Any, prefix: str) -> int:
    client = app.test_client()
    counter = itertools.count()

    def one() -> None:
        n = next(counter)
        resp = client.get(f"/orders/{n}", headers={"X-Request-ID": f"{prefix}-{n}"})
        resp.get_data()
        resp.close()

    for _ in range(50):  # warm up: the shared client and its ring are made on first use
        one()
    benchmark.group = GROUP
    benchmark(one)
    if benchmark.stats is not None:
        _medians[prefix.rsplit("-", 1)[-1]] = benchmark.stats.stats.median
    return next(counter)


def test_load_analytics_off(benchmark: Any, flask_app: Any) -> None:
    middleware = flask_app.extensions["collector"]
    flask_app.wsgi_app = middleware.app  # the same app without the middleware
    try:
        _run(benchmark, flask_app, "load-off")
    finally:
        flask_app.wsgi_app = middleware


def test_load_analytics_on(benchmark: Any, flask_app: Any, collected: Collected) -> None:
    middleware = flask_app.extensions["collector"]
    before = middleware.stats()["dropped"]
    calls = _run(benchmark, flask_app, "load-on")
    accepted = calls - (middleware.stats()["dropped"] - before)
    got = collected.wait_for(accepted, timeout_s=60,
                             where=lambda r: str(r.get("request_id")).startswith("load-on-"))
    assert len({r["request_id"] for r in got}) == len(got) == accepted

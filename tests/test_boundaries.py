"""Package boundaries: what importing each part loads (``python -X importtime``).

The app process imports ``collector``: it must load no sink driver and no
pump module. The pump imports ``collector.common`` and ``collector.config``:
it must not load the in-app client (``collector._client`` registers at-fork
and at-exit hooks in every process that imports it).
"""

from __future__ import annotations

import subprocess
import sys

DRIVERS = ("pymongo", "psycopg", "httpx")


def _imported(code: str) -> set[str]:
    """Every module ``code`` imports: what ``python -X importtime`` reports, plus
    ``sys.modules`` at the end (modules loaded by ``importlib.import_module``,
    like the sink registry's, are not timed)."""
    code += "\nimport sys\nprint(*sys.modules)"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                          capture_output=True, text=True, timeout=60, check=True)
    names = set(proc.stdout.split())
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the header line
                names.add(name)
    assert names, proc.stderr
    return names


def _offenders(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if n.split(".")[0] in prefixes)


def test_import_collector_loads_no_sink_driver_and_no_pump_module() -> None:
    names = _imported("import collector")
    assert "collector" in names
    assert _offenders(names, (*DRIVERS, "pump")) == []
    assert "collector._client" not in names  # lazy: loaded on first use of Analytics


def test_the_app_client_loads_no_sink_driver_and_no_pump_module() -> None:
    names = _imported("from collector import Analytics; import collector.gunicorn")
    assert "collector._client" in names
    assert _offenders(names, (*DRIVERS, "pump")) == []


def test_pump_does_not_load_the_client() -> None:
    names = _imported("import pump.config")
    assert "pump.config" in names
    assert "collector._client" not in names
    names = _imported("import pump.cli, pump._supervisor, pump._worker, pump.sinks; "
                      "pump.sinks.registry()")
    assert "collector._client" not in names
    assert _offenders(names, DRIVERS) == []  # drivers load when a sink opens


def test_collector_common_loads_neither_client_nor_daemon() -> None:
    names = _imported("import collector.common.stream, collector.common.redisconn, "
                      "collector.common.health, collector.common.log, "
                      "collector.common.settings, collector.common.redact, "
                      "collector.common.counters")
    assert "collector._client" not in names
    assert _offenders(names, ("pump",)) == []
    assert not any(n.startswith("collector.daemon") for n in names)

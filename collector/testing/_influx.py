"""A real InfluxDB 1.x (Debian's ``influxdb`` package) for the influx sink's tests.

``influxd -config FILE`` with its own meta, data and WAL directories in
``workdir``, its RPC and HTTP listeners on free loopback ports, reporting,
the ``_internal`` monitor database and the HTTP log off. The data is on
disk, so ``stop()`` and ``start()`` again make a real outage and restart;
``pause()``/``resume()`` (SIGSTOP/SIGCONT) a server that accepts and never answers.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ._spawned import SpawnedPeer
from ._wait import free_port

__all__ = ["InfluxServer"]

_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{dir}/meta"
[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{http}"
  auth-enabled = {auth}
  log-enabled = false
  pprof-enabled = false
[logging]
  level = "warn"
  suppress-logo = true
"""


class InfluxServer(SpawnedPeer):
    """``influxd`` of its own; ``url``, ``query()``, ``stop()``/``start()`` (same data;
    ``stop()`` is SIGTERM, influxd closes its files).

    With ``admin`` (``(user, password)``) authentication is on and that
    admin user is created at the first start (InfluxDB allows that one
    statement without credentials while it has no user).
    """

    program = "influxd"
    log_name = "influxd.log"

    def __init__(self, workdir: Path, admin: tuple[str, str] | None = None) -> None:
        binary = shutil.which("influxd")
        if binary is None:
            raise RuntimeError("influxd is not on PATH (Debian's influxdb): run `sh .ci/setup`")
        super().__init__(workdir)
        self.binary = binary
        self.admin = admin
        self.config = workdir / "influxdb.conf"
        self.config.write_text(_CONFIG.format(rpc=free_port(), http=self.port, dir=workdir,
                                              auth="true" if admin else "false"))
        self._admin_made = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> InfluxServer:
        import httpx

        def up() -> bool:
            try:
                return httpx.get(f"{self.url}/ping", timeout=1).status_code == 204
            except httpx.HTTPError:
                return False

        self.spawn([self.binary, "-config", str(self.config)], up, timeout)
        if self.admin and not self._admin_made:
            user, password = self.admin
            self.query(f"CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES",
                       auth=False)
            self._admin_made = True
        return self

    def query(self, q: str, db: str | None = None, *, auth: bool = True) -> Any:
        """The statement's JSON answer (POST ``/query``, times as epoch nanoseconds);
        raises ``AssertionError`` on an error."""
        import httpx

        params = {"q": q, "epoch": "ns", **({"db": db} if db else {})}
        creds = self.admin if auth and self.admin else None
        resp = httpx.post(f"{self.url}/query", params=params, auth=creds, timeout=30)
        body = resp.json()
        assert resp.status_code == 200 and "error" not in body, body
        for result in body.get("results", []):
            assert "error" not in result, result
        return body

    def points(self, db: str, measurement: str) -> list[dict[str, Any]]:
        """Every point of ``measurement`` as a dict of its columns (``time`` in ns)."""
        body = self.query(f'SELECT * FROM "{measurement}"', db)
        out = []
        for result in body["results"]:
            for series in result.get("series", []):
                cols = series["columns"]
                out.extend(dict(zip(cols, row, strict=True)) for row in series["values"])
        return out

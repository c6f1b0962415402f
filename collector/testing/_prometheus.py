"""A real ``prometheus`` server (Debian's ``prometheus`` package) scraping services under test."""

from __future__ import annotations

import json
import shutil
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ._process import Service
from ._wait import free_port

__all__ = ["Prometheus"]


class Prometheus(Service):
    """``prometheus`` on a free loopback port, its data in ``workdir``.

    ``targets`` maps a job name to ``host:port`` addresses scraped every
    ``interval_s``; ``rule_files`` are evaluated at the same interval.
    ``start()`` waits for ``/-/ready``; :meth:`query` runs an instant query,
    :meth:`alerts` lists the alerts and their state, :meth:`scraped` says
    whether every target was scraped successfully.
    """

    up_path = "/-/ready"

    def __init__(self, workdir: Path, targets: Mapping[str, Sequence[str]], *,
                 rule_files: Sequence[Path] = (), interval_s: float = 1.0,
                 binary: str = "prometheus") -> None:
        exe = shutil.which(binary)
        if exe is None:
            raise RuntimeError(f"{binary} is not installed (Debian package prometheus; "
                               ".ci/setup installs it)")
        workdir.mkdir(parents=True, exist_ok=True)
        interval = f"{int(interval_s * 1000)}ms"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval,
                       "scrape_timeout": interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(addrs)}]}
                               for job, addrs in targets.items()],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        port = free_port()
        super().__init__([exe, f"--config.file={self.config}",
                          f"--storage.tsdb.path={workdir / 'data'}",
                          f"--web.listen-address=127.0.0.1:{port}",
                          "--log.level=warn"],
                         log=workdir / "prometheus.log", address=f"127.0.0.1:{port}")

    def api(self, path: str, **params: str) -> Any:
        code, body = self.get(f"/api/v1/{path}?{urllib.parse.urlencode(params)}")
        doc = json.loads(body) if body else {}
        if code != 200 or doc.get("status") != "success":
            raise AssertionError(f"prometheus {path} {params}: {code} {doc}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now (``AssertionError`` when it does not run)."""
        return self.api("query", query=expr)["result"]

    def alerts(self) -> dict[str, str]:
        """Alert name -> its state (``pending`` or ``firing``) for the active ones."""
        return {a["labels"]["alertname"]: a["state"] for a in self.api("alerts")["alerts"]}

    def scraped(self) -> bool:
        """Every target was scraped and is up."""
        active = self.api("targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

"""The ``collector`` command: operators' tooling over a running daemon and pump.

Subcommands read both services' configs the way the services do (``--daemon
FILE`` or ``$COLLECTOR_CONFIG``, ``--pump FILE`` or ``$COLLECTOR_PUMP_CONFIG``,
then the environment) to find their endpoints, Redis and the rings.

``collector status [--json]`` exits 0 when everything is ready, 1 when
something is degraded, 2 when a service or Redis cannot be reached (3 for a
config that does not load).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from collector.common.settings import ConfigError

from ._sources import load_configs

EXIT_CONFIG = 3

_config_options = [
    click.option("--daemon", "daemon_file", type=click.Path(dir_okay=False), default=None,
                 envvar="COLLECTOR_CONFIG",
                 help="collector-daemon's config file (default $COLLECTOR_CONFIG)."),
    click.option("--pump", "pump_file", type=click.Path(dir_okay=False), default=None,
                 envvar="COLLECTOR_PUMP_CONFIG",
                 help="collector-pump's config file (default $COLLECTOR_PUMP_CONFIG)."),
]


def config_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(_config_options):
        f = opt(f)
    return f


def _configs(daemon_file: str | None, pump_file: str | None) -> Any:
    try:
        return load_configs(daemon_file, pump_file)
    except ConfigError as exc:
        click.echo(f"collector: invalid configuration:\n{exc}", err=True)
        sys.exit(EXIT_CONFIG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """See and operate a running collector-daemon and collector-pump."""


@main.command()
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
@click.option("--interval", type=click.FloatRange(0, 60), default=1.0, show_default=True,
              help="Seconds between the two scrapes rates are computed from (0: no rates).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1, 60), default=3.0,
              show_default=True, help="Timeout of each request to a service or Redis.")
def status(daemon_file: str | None, pump_file: str | None, as_json: bool, interval: float,
           timeout_s: float) -> None:
    """Rings, flushers, Redis and every sink; exit 0 ready, 1 degraded, 2 unreachable."""
    from ._render import render_status
    from ._status import gather, rates

    daemon_cfg, pump_cfg = _configs(daemon_file, pump_file)
    doc = gather(daemon_cfg, pump_cfg, timeout_s=timeout_s)
    if interval > 0:
        rates(doc, daemon_cfg, pump_cfg, interval, timeout_s=timeout_s)
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        Console(width=max(Console().width, 120)).print(render_status(doc))
    sys.exit(doc["exit_code"])


if __name__ == "__main__":  # pragma: no cover
    main()

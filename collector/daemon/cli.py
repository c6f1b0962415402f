"""Command line of ``collector-daemon``.

``collector-daemon --config FILE`` plus flags for the common keys; a flag
wins over ``COLLECTOR_*`` environment variables, which win over the file.
``--check`` validates the configuration (exit 0, or 2 naming each problem).
Exit codes: 0 stopped cleanly (SIGTERM/SIGINT), 1 forced stop (second
signal), 2 bad configuration or unusable directories/addresses, 3 Redis
unreachable after ``startup_redis_wait_s``.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from collector.common.log import get_logger
from collector.common.log import setup as setup_logging
from collector.common.redact import scrub
from collector.common.settings import deprecations, log_deprecations
from collector.config import ConfigError, load_config


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              envvar="COLLECTOR_CONFIG", help="YAML config file (see configs/collector.yaml).")
@click.option("--redis-url", default=None,
              help="redis://, rediss:// or unix:// URL (default: an embedded redis-server).")
@click.option("--rings-dir", default=None, help="Directory of the app's ring files.")
@click.option("--pool-size", type=int, default=None, help="Number of flusher processes.")
@click.option("--batch-size", type=int, default=None, help="Records per stream entry at most.")
@click.option("--flush-interval-ms", type=float, default=None,
              help="Send a batch once its first record is this old.")
@click.option("--shutdown-timeout-s", type=float, default=None,
              help="Time to drain the rings on SIGTERM/SIGINT.")
@click.option("--health-address", default=None, help="HOST:PORT of /healthz /readyz /metrics.")
@click.option("--stream-key", default=None, help="Redis stream key (prefix with shards).")
@click.option("--log-format", type=click.Choice(["kv", "json"]), default=None)
@click.option("--check", is_flag=True, help="Validate the configuration and exit (0 or 2).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default=None)
def main(config_path: str | None, check: bool, **flags: Any) -> None:
    """Drain the app's analytics rings into a Redis stream, losing nothing."""
    try:
        with deprecations() as renamed:
            cfg = load_config(config_path, overrides=flags)
    except ConfigError as exc:
        click.echo(f"collector-daemon: invalid configuration:\n{scrub(str(exc))}", err=True)
        sys.exit(2)
    if check:
        for w in renamed:
            click.echo(f"collector-daemon: {w}", err=True)
        click.echo(f"{config_path or '<defaults and environment>'}: ok")
        return
    from ._supervisor import run

    setup_logging(cfg.log_format, cfg.log_level, proc="supervisor")
    log_deprecations(renamed, get_logger("collector.daemon.cli"))

    sys.exit(run(cfg))


if __name__ == "__main__":  # pragma: no cover
    main()

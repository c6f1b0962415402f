"""Command line of ``collector-pump``."""

from __future__ import annotations

import sys

import click

from collector.common.log import get_logger
from collector.common.log import setup as setup_logging
from collector.common.settings import deprecations, log_deprecations

from .config import ConfigError, load_config


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              envvar="COLLECTOR_PUMP_CONFIG",
              help="YAML config file (see configs/pump.yaml); env COLLECTOR_PUMP_CONFIG.")
@click.option("--check", is_flag=True, help="Validate the configuration and exit.")
@click.option("--iam/--no-iam", "iam", default=None,
              help="The file is iam-pump's iam-pump.yaml (default: told apart by its keys).")
def main(config_path: str | None, check: bool, iam: bool | None) -> None:
    """Read analytics from the Redis stream into the configured sinks."""
    if config_path is None:
        raise click.UsageError("give --config FILE (or set COLLECTOR_PUMP_CONFIG)")
    try:
        with deprecations() as renamed:
            config = load_config(config_path, iam=iam)
    except ConfigError as exc:
        click.echo(f"collector-pump: bad configuration:\n{exc}", err=True)
        sys.exit(2)
    if check:
        for w in renamed:
            click.echo(f"collector-pump: {w}", err=True)
        click.echo(f"{config_path}: ok ({len(config.pumps)} sink(s))")
        return
    setup_logging(config.log_format, config.log_level, proc="supervisor")
    log_deprecations(renamed, get_logger("pump.cli"))
    from ._supervisor import Supervisor

    sys.exit(Supervisor(config, label=config_path).run())

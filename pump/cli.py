"""Command line of ``collector-pump``."""

from __future__ import annotations

import sys

import click

from collector.common.log import get_logger
from collector.common.log import setup as setup_logging
from collector.common.redact import scrub
from collector.common.settings import deprecations, log_deprecations

from .config import ConfigError, PumpConfig, load_config


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              envvar="COLLECTOR_PUMP_CONFIG",
              help="YAML config file (see configs/pump.yaml); env COLLECTOR_PUMP_CONFIG.")
@click.option("--check", is_flag=True, help="Validate the configuration and exit.")
@click.option("--iam/--no-iam", "iam", default=None,
              help="The file is iam-pump's iam-pump.yaml (default: told apart by its keys).")
@click.option("--prune-groups", is_flag=True,
              help="Delete the consumer groups of no configured sink nor respect_groups "
                   "(after a confirmation) and exit.")
@click.option("--yes", is_flag=True, help="With --prune-groups: do not ask.")
def main(config_path: str | None, check: bool, iam: bool | None, prune_groups: bool,
         yes: bool) -> None:
    """Read analytics from the Redis stream into the configured sinks."""
    if config_path is None:
        raise click.UsageError("give --config FILE (or set COLLECTOR_PUMP_CONFIG)")
    try:
        with deprecations() as renamed:
            config = load_config(config_path, iam=iam)
    except ConfigError as exc:
        click.echo(f"collector-pump: bad configuration:\n{scrub(str(exc))}", err=True)
        sys.exit(2)
    if check:
        for w in renamed:
            click.echo(f"collector-pump: {w}", err=True)
        click.echo(f"{config_path}: ok ({len(config.pumps)} sink(s))")
        return
    setup_logging(config.log_format, config.log_level, proc="supervisor")
    log_deprecations(renamed, get_logger("pump.cli"))
    if prune_groups:
        sys.exit(_prune(config, yes))
    from ._supervisor import Supervisor

    sys.exit(Supervisor(config, label=config_path).run())


def _prune(config: PumpConfig, yes: bool) -> int:
    import redis

    from collector.common.private import NotPrivate, private_directory, private_socket
    from collector.common.stream import SOCKET_NAME, default_runtime_dir

    from ._groups import prune
    from ._redis import connect

    if config.redis_url is None:  # the embedded Redis: verified as the supervisor does
        runtime = default_runtime_dir()
        try:
            private_directory(runtime, "runtime directory of the embedded Redis")
            private_socket(runtime / SOCKET_NAME, "runtime directory of the embedded Redis")
        except NotPrivate as exc:
            click.echo(f"collector-pump: {exc}", err=True)
            return 2
    try:
        prune(connect(config), config, echo=click.echo,
              confirm=(lambda _q: True) if yes else
              (lambda q: click.confirm(q, default=False, err=True)))
    except redis.RedisError as exc:
        click.echo(f"collector-pump: Redis at {config.redacted_redis_url()}: {exc}", err=True)
        return 3
    return 0

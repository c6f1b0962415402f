"""Command line of ``collector-pump``."""

from __future__ import annotations

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config file (see configs/pump.yaml).")
def main(config_path: str | None) -> None:
    """Read analytics from Redis into the configured sinks (not built yet)."""
    raise SystemExit("collector-pump: not built yet")

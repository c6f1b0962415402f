"""Command line of ``collector-daemon``."""

from __future__ import annotations

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config file (see configs/collector.yaml).")
def main(config_path: str | None) -> None:
    """Drain the app's analytics rings into Redis (not built yet)."""
    raise SystemExit("collector-daemon: not built yet")

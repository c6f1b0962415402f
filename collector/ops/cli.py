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
EXIT_UNREACHABLE = 2

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


# -- dead letters ------------------------------------------------------------------

def _dl_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--sink", required=True, help="The sink whose dead letters these are."),
        click.option("--since", default=None,
                     help="Only dead letters written since: 30m, 2h, 1d or an ISO 8601 time."),
        click.option("--limit", type=click.IntRange(1), default=None,
                     help="At most this many (oldest first)."),
        click.option("--id", "ids", multiple=True, help="This dead letter (repeatable)."),
    ]):
        f = opt(f)
    return config_options(f)


class _DeadLetterContext:
    def __init__(self, daemon_file: str | None, pump_file: str | None, sink: str,
                 since: str | None, limit: int | None, ids: tuple[str, ...]) -> None:
        from collector.common.redisconn import connect_from_config

        from ._deadletters import parse_since

        _, self.pump = _configs(daemon_file, pump_file)
        if sink not in self.pump.pumps:
            raise click.UsageError(f"--sink {sink!r}: the pump's config has no such sink; "
                                   f"its sinks: {', '.join(self.pump.pumps)}")
        self.sink = sink
        try:
            self.since_ms = parse_since(since) if since else None
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        self.limit = limit
        self.ids = ids
        self.keys = self.pump.shard_keys()
        self.r = connect_from_config(self.pump)
        try:
            self.r.ping()
        except Exception as exc:
            click.echo(f"collector: Redis {self.pump.redacted_redis_url()} is unreachable: "
                       f"{exc}", err=True)
            sys.exit(EXIT_UNREACHABLE)

    def letters(self) -> list[Any]:
        from ._deadletters import select

        return list(select(self.r, self.keys, self.sink, since_ms=self.since_ms,
                           limit=self.limit, ids=self.ids))

    def count(self) -> int:
        from ._deadletters import count

        return count(self.r, self.keys, self.sink)


@main.group("dead-letters")
def dead_letters() -> None:
    """List, show, replay or purge a sink's dead letters."""


@dead_letters.command("list")
@_dl_options
@click.option("--json", "as_json", is_flag=True, help="Print them as a JSON array.")
def dl_list(daemon_file: str | None, pump_file: str | None, sink: str, since: str | None,
            limit: int | None, ids: tuple[str, ...], as_json: bool) -> None:
    """Dead letters with their reason, record id and age, oldest first."""
    from rich.table import Table

    ctx = _DeadLetterContext(daemon_file, pump_file, sink, since, limit, ids)
    rows = [dl.summary() for dl in ctx.letters()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"dead letters of {sink}: {len(rows)} shown of {ctx.count()}",
                  title_justify="left")
    for col in ("id", "age", "reason", "record id", "deliveries", "error"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["id"], f"{row['age_s']:.0f}s", row["reason"], row["record_id"] or "-",
                      str(row["deliveries"]), row["error"][:80])
    Console(width=max(Console().width, 120)).print(table)


@dead_letters.command("show")
@_dl_options
def dl_show(daemon_file: str | None, pump_file: str | None, sink: str, since: str | None,
            limit: int | None, ids: tuple[str, ...]) -> None:
    """One dead letter (--id) decoded: why, when, and its records."""
    from ._deadletters import decoded

    if not ids:
        raise click.UsageError("give --id ID (see collector dead-letters list)")
    ctx = _DeadLetterContext(daemon_file, pump_file, sink, since, limit, ids)
    found = ctx.letters()
    if not found:
        click.echo(f"collector: no dead letter {', '.join(ids)} of {sink}", err=True)
        sys.exit(1)
    for dl in found:
        click.echo(json.dumps(decoded(dl), indent=2, default=str))


@dead_letters.command("replay")
@_dl_options
def dl_replay(daemon_file: str | None, pump_file: str | None, sink: str, since: str | None,
              limit: int | None, ids: tuple[str, ...]) -> None:
    """Put dead letters back for this sink's group only (each once, even when rerun)."""
    from ._deadletters import replay

    ctx = _DeadLetterContext(daemon_file, pump_file, sink, since, limit, ids)
    before = ctx.count()
    done = replay(ctx.r, ctx.letters(), sink)
    click.echo(f"{sink}: replayed {done}; dead letters {before} before, {ctx.count()} after")


@dead_letters.command("purge")
@_dl_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dl_purge(daemon_file: str | None, pump_file: str | None, sink: str, since: str | None,
             limit: int | None, ids: tuple[str, ...], yes: bool) -> None:
    """Delete dead letters (asks first unless --yes)."""
    from ._deadletters import purge

    ctx = _DeadLetterContext(daemon_file, pump_file, sink, since, limit, ids)
    before = ctx.count()
    letters = ctx.letters()
    if not letters:
        click.echo(f"{sink}: nothing to purge; dead letters {before}")
        return
    if not yes and not click.confirm(f"Delete {len(letters)} of {before} dead letters of "
                                     f"{sink}? They cannot be replayed afterwards"):
        click.echo("Nothing deleted.")
        sys.exit(1)
    done = purge(ctx.r, letters)
    click.echo(f"{sink}: purged {done}; dead letters {before} before, {ctx.count()} after")


# -- config --------------------------------------------------------------------------

@main.group("config")
def config_group() -> None:
    """Validate both services' configs, or show what they resolve to."""


def _flags(values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(f"--set {item!r}: give KEY=VALUE (a collector-daemon flag)")
        out[key.strip()] = value
    return out


_set_option = click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE",
    help="A collector-daemon command-line flag's value (wins over file and environment).")


@config_group.command("check")
@config_options
@_set_option
def config_check(daemon_file: str | None, pump_file: str | None, sets: tuple[str, ...]) -> None:
    """Load both configs and the environment as the services would; exit 2 on any problem."""
    import os

    from collector.common.settings import deprecations
    from collector.config import load_config as load_daemon_config
    from pump.config import load_config as load_pump_config

    flags = _flags(sets)
    failed = False
    with deprecations() as found:
        try:
            load_daemon_config(daemon_file, overrides=flags)
            click.echo(f"{daemon_file or 'collector-daemon (no file)'}: ok")
        except ConfigError as exc:
            failed = True
            click.echo(f"collector-daemon: invalid configuration:\n{exc}", err=True)
        if pump_file is None:
            click.echo("collector-pump: no --pump FILE (nor $COLLECTOR_PUMP_CONFIG); "
                       "not checked", err=True)
        else:
            try:
                cfg = load_pump_config(pump_file, environ=os.environ)
                click.echo(f"{pump_file}: ok ({len(cfg.pumps)} sinks)")
            except ConfigError as exc:
                failed = True
                click.echo(f"collector-pump: invalid configuration:\n{exc}", err=True)
    for w in found:
        click.echo(f"collector: {w}", err=True)
    sys.exit(2 if failed else 0)


@config_group.command("show")
@config_options
@_set_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of the rows.")
def config_show(daemon_file: str | None, pump_file: str | None, sets: tuple[str, ...],
                as_json: bool) -> None:
    """Every key's effective value and where it came from (default, file, env, flag)."""
    from ._config import load, rows

    try:
        loaded = load(daemon_file, pump_file, _flags(sets))
    except ConfigError as exc:
        click.echo(f"collector: invalid configuration:\n{exc}", err=True)
        sys.exit(2)
    table = rows(loaded)
    if as_json:
        click.echo(json.dumps([{"service": svc, "key": key, "value": value, "source": src}
                               for svc, key, value, src in table], indent=2))
        return
    width = max(len(key) for _, key, _, _ in table)
    vwidth = min(60, max(len(v) for _, _, v, _ in table))
    click.echo(f"{'service':<8} {'key':<{width}} {'value':<{vwidth}} source")
    for svc, key, value, src in table:
        click.echo(f"{svc:<8} {key:<{width}} {value:<{vwidth}} {src}")


@main.command()
@config_options
@click.option("--refresh", "refresh_s", type=click.FloatRange(0.1, 60), default=2.0,
              show_default=True, help="Seconds between refreshes (rates are over this).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1, 60), default=3.0,
              show_default=True, help="Timeout of each request to a service or Redis.")
@click.option("--iterations", type=click.IntRange(0), default=0,
              help="Stop after this many refreshes (0: until q).")
def top(daemon_file: str | None, pump_file: str | None, refresh_s: float, timeout_s: float,
        iterations: int) -> None:
    """The status screen, live: rates between refreshes, worst sinks first; q quits."""
    from ._top import run_top

    daemon_cfg, pump_cfg = _configs(daemon_file, pump_file)
    try:
        sys.exit(run_top(daemon_cfg, pump_cfg, refresh_s=refresh_s, timeout_s=timeout_s,
                         iterations=iterations))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()

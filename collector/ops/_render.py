"""The status document as terminal tables (``collector status``, ``collector top``)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

__all__ = ["render_status", "sink_badness"]

_STYLE = {"ready": "bold green", "degraded": "bold yellow", "unreachable": "bold red"}


def _n(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.1f}{unit}"
    return f"{int(v):,}{unit}"


def _age(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 120:
        return f"{v:.1f}s"
    if v < 7200:
        return f"{v / 60:.1f}m"
    return f"{v / 3600:.1f}h"


def _bytes(v: float | None) -> str:
    if v is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(v) < 1024 or unit == "GiB":
            return f"{v:,.0f} {unit}" if unit == "B" else f"{v:,.1f} {unit}"
        v /= 1024
    return str(v)


def _yes(ok: bool | None, yes: str = "yes", no: str = "NO") -> Text:
    if ok is None:
        return Text("?", style="yellow")
    return Text(yes, style="green") if ok else Text(no, style="bold red")


def sink_badness(s: dict[str, Any]) -> tuple[Any, ...]:
    """Sort key, worst first: not ready, oldest unacknowledged, lag, dead letters."""
    return (s.get("ready") is not False, -(s.get("oldest_age_s") or 0.0),
            -(s.get("lag_entries") or 0), -(s.get("dead_letters") or 0))


def _sinks_table(doc: dict[str, Any]) -> Table:
    t = Table(title="sinks (worst first)", title_justify="left", expand=False)
    for col in ("sink", "ready", "lag ent", "lag rec", "pending", "oldest", "delivered",
                "/s", "retries", "dead", "spool", "why"):
        t.add_column(col, justify="left" if col in ("sink", "why", "ready") else "right")
    sinks = sorted(doc["pump"]["sinks"].items(), key=lambda kv: sink_badness(kv[1]))
    for name, s in sinks:
        t.add_row(f"{name} ({s['type']})", _yes(s["ready"]), _n(s["lag_entries"]),
                  _n(s["lag_records"]), _n(s["pending_entries"]), _age(s["oldest_age_s"]),
                  _n(s["delivered"]), _n(s["delivered_per_s"]), _n(s["retries"]),
                  _n(s["dead_letters"]), _bytes(s["spool_bytes"]), "; ".join(s["why"])[:80])
    return t


def _rings_table(doc: dict[str, Any]) -> Table:
    rings = doc["rings"]
    here = rings["local_path"] + (f" ({rings['local_path_why']})"
                                  if rings["local_path_why"] else "")
    t = Table(title=f"rings in {rings['dir']} ({len(rings['rings'])}); a producer from this "
                    f"install writes on the {here} path, a ring with checksums on the pure "
                    "path", title_justify="left")
    for col in ("ring", "producer", "alive", "fill", "written", "pending", "dropped full",
                "dropped oversize", "checksum"):
        t.add_column(col, justify="left" if col in ("ring", "alive") else "right")
    worst = sorted(rings["rings"], key=lambda r: -(r.get("fill_ratio") or 0.0))
    for ring in worst[:20]:
        if ring.get("error"):
            t.add_row(ring["path"], "-", Text("bad", style="red"), ring["error"][:40],
                      "", "", "", "", "")
            continue
        alive = _yes(ring["producer_alive"], "yes", "closed" if ring["closed"] else "gone")
        t.add_row(ring["ring_id"], str(ring["producer_pid"]), alive,
                  f"{ring['fill_ratio'] * 100:.1f}%", _n(ring["written"]), _n(ring["pending"]),
                  _n(ring["dropped_full"]), _n(ring["dropped_oversize"]),
                  "yes" if ring["checksum"] else "no")
    if len(worst) > 20:
        t.caption = f"and {len(worst) - 20} more"
    return t


def _daemon_lines(doc: dict[str, Any]) -> Text:
    d = doc["daemon"]
    out = Text()
    out.append("daemon ", style="bold")
    out.append(f"{d['address']}  ")
    if not d["reachable"]:
        out.append(f"unreachable: {d['error']}\n", style="bold red")
        return out
    out.append_text(_yes(d["ready"], "ready", "NOT READY"))
    out.append(f"  reads rings on the {d['ring_path'] or '?'} path")
    rates = d.get("rates") or {}
    out.append(f"  written {_n(d['records_written'])} records in {_n(d['batches_written'])} "
               f"batches ({_n(rates.get('records_per_s'))} rec/s, "
               f"{_n(rates.get('batches_per_s'))} batches/s)  redis errors "
               f"{_n(d['redis_errors'])}  backpressure {_n(d['backpressure'])}  dropped "
               f"full {_n(d['dropped']['full'])} oversize {_n(d['dropped']['oversize'])}\n")
    for f in d["flushers"]:
        state = ("dead" if not f.get("alive") else "stalled" if f.get("stalled")
                 else "backing off" if f.get("backing_off") else "ok")
        out.append(f"  flusher {f.get('slot')} pid {f.get('pid')} rings {f.get('rings')} "
                   f"heartbeat {_age(f.get('heartbeat_age_s'))} ")
        out.append(state + "\n", style="green" if state == "ok" else "bold red")
    return out


def _redis_lines(doc: dict[str, Any]) -> Text:
    r = doc["redis"]
    out = Text()
    out.append("redis ", style="bold")
    out.append(f"{r['url']}  ")
    if not r["reachable"]:
        out.append(f"unreachable: {r['error']}\n", style="bold red")
        return out
    p = r["persistence"]
    out.append(f"used memory {_bytes(r['used_memory_bytes'])}"
               f" (maxmemory {_bytes(r['maxmemory_bytes']) if r['maxmemory_bytes'] else 'none'})"
               "  appendonly ")
    out.append_text(_yes(p["appendonly"], "yes", "NO"))
    out.append(f" appendfsync {p['appendfsync'] or '?'}\n")
    for s in r["streams"]:
        budget = f"{_n(s['budget_entries'])} entries"
        if s.get("budget_bytes"):
            budget += f" / {_bytes(s['budget_bytes'])}"
        out.append(f"  stream {s['key']}: {_n(s['entries'])} entries, {_bytes(s['bytes'])} "
                   f"(budget {budget})")
        out.append(" AT BUDGET\n" if s["over_budget"] else "\n",
                   style="bold red" if s["over_budget"] else "")
    return out


def render_status(doc: dict[str, Any]) -> Group:
    """Everything ``collector status`` shows, worst news first."""
    head = Text()
    head.append(f"collector status: {doc['verdict']}", style=_STYLE[doc["verdict"]])
    head.append(f" (exit {doc['exit_code']})\n")
    for p in doc["problems"]:
        head.append(f"  problem: {p}\n", style="red")
    for w in doc["warnings"]:
        head.append(f"  warning: {w}\n", style="yellow")
    pump = doc["pump"]
    ptext = Text()
    ptext.append("pump ", style="bold")
    ptext.append(f"{pump['address']}  ")
    if pump["reachable"]:
        ptext.append_text(_yes(pump["ready"], "ready", "NOT READY"))
    else:
        ptext.append(f"unreachable: {pump['error']}", style="bold red")
    return Group(head, _daemon_lines(doc), _redis_lines(doc), ptext, _sinks_table(doc),
                 _rings_table(doc))

"""``collector config check|show``: both services' configs as they would load them.

``check`` loads the daemon's and the pump's config (file, then environment,
then the daemon's flags given as ``--set KEY=VALUE``) exactly as the
services do, every sink's ``meta`` by its own config type, and reports every
problem and every renamed key. ``show`` prints the effective values of
every key with where each came from: ``default``, ``file``, ``env
VARIABLE`` or ``flag``. Secrets never appear: a key of a secret type
shows as ``***``, a URL or DSN with its password as ``***``
(:mod:`collector.common.redact`), a string key whose name says it is a
secret (``password``, ``token``, ``secret`` ...) as ``***``, the values of a
mapping named like one (``headers``) as ``***``; finally every value of a
``*PASSWORD*`` / ``*TOKEN*`` / ``*SECRET*`` variable, of the variables sinks
name in ``auth_env`` and every secret the config models remembered
(:func:`collector.common.redact.scrub`) is replaced wherever it would appear.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel, SecretStr

from collector.common.redact import redact_dsn, redact_text
from collector.common.settings import (
    ConfigDeprecationWarning,
    ConfigWarning,
    deprecations,
    read_yaml_mapping,
    rename_keys,
)
from collector.config import CollectorConfig
from collector.config import load_config as load_daemon_config
from pump.config import PumpConfig
from pump.config import load_config as load_pump_config

__all__ = ["Loaded", "load", "rows"]

_SECRET_NAME = re.compile(r"(password|passwd|secret|token|auth|header|credential|api_?key)",
                          re.I)
_SECRET_WORD = re.compile(r"(password|passwd|secret|token|credential|api_?key)", re.I)
_SECRET_ENV = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|API_?KEY)")


class Loaded:
    """Both configs, where each key came from, and the warnings loading gave."""

    def __init__(self, daemon_file: str | None, pump_file: str | None,
                 flags: Mapping[str, Any], environ: Mapping[str, str]) -> None:
        self.daemon_file, self.pump_file = daemon_file, pump_file
        self.environ = environ
        self.flags = dict(flags)
        self.daemon_sources: dict[tuple[str, ...], str] = {}
        self.pump_sources: dict[tuple[str, ...], str] = {}
        with deprecations() as found:
            self.daemon = load_daemon_config(daemon_file, environ=environ, overrides=flags,
                                             sources_out=self.daemon_sources)
            self.pump = (load_pump_config(pump_file, environ=environ,
                                          sources_out=self.pump_sources)
                         if pump_file else None)
        self.warnings: list[ConfigDeprecationWarning | ConfigWarning] = list(found)
        self.daemon_file_data = _file_data(CollectorConfig, daemon_file)
        self.pump_file_data = _file_data(PumpConfig, pump_file)

    def secrets(self) -> list[str]:
        """Values that must never be printed (from the environment and auth_env)."""
        out = [v for k, v in self.environ.items() if _SECRET_ENV.search(k) and len(v) >= 3]
        if self.pump is not None:
            for spec in self.pump.pumps.values():
                name = spec.meta.get("auth_env")
                if isinstance(name, str) and self.environ.get(name):
                    out.append(self.environ[name])
        return out


def load(daemon_file: str | None, pump_file: str | None, flags: Mapping[str, Any],
         environ: Mapping[str, str] | None = None) -> Loaded:
    """Both configs; :class:`collector.common.settings.ConfigError` when one does not load."""
    return Loaded(daemon_file, pump_file, flags, os.environ if environ is None else environ)


def _file_data(model: type[BaseModel], path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    data = read_yaml_mapping(path)
    with deprecations():
        rename_keys(model, data, path)
    return data


def _in(data: Any, path: tuple[str, ...]) -> bool:
    for part in path:
        if not isinstance(data, Mapping) or part not in data:
            return False
        data = data[part]
    return True


def _display(name: str, value: Any) -> str:
    if isinstance(value, SecretStr):  # a URL or DSN: its password as ***; anything else ***
        raw = value.get_secret_value()
        if name.endswith(("url", "uri", "dsn")) and raw:
            return redact_dsn(raw)
        return "***" if raw else "''"
    if isinstance(value, str) and _SECRET_WORD.search(name) and not name.endswith("_env"):
        return "***"  # (a key naming a variable, auth_env, names no secret)
    if isinstance(value, str) and "://" in value:
        return redact_dsn(value)
    if isinstance(value, Mapping) and value and _SECRET_NAME.search(name):
        return "{" + ", ".join(f"{k}: ***" for k in value) + "}"
    return repr(value) if isinstance(value, str) else str(value)


def _leaves(obj: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from _leaves(getattr(obj, name), (*path, name))
    elif isinstance(obj, Mapping) and obj and not (path and _SECRET_NAME.search(path[-1])):
        for k, v in obj.items():
            yield from _leaves(v, (*path, str(k)))
    else:
        yield path, obj


def _source(path: tuple[str, ...], sources: Mapping[tuple[str, ...], str],
            file_data: Mapping[str, Any], flags: Mapping[str, Any]) -> str:
    if len(path) == 1 and flags.get(path[0]) is not None:
        return "flag"
    for n in range(len(path), 0, -1):  # a mapping set as a whole sets its keys
        if path[:n] in sources:
            return f"env {sources[path[:n]]}"
    return "file" if _in(file_data, path) else "default"


def rows(loaded: Loaded) -> list[tuple[str, str, str, str]]:
    """(service, key, value, source) of every key, secrets redacted."""
    out = []
    for path, value in _leaves(loaded.daemon):
        out.append(("daemon", ".".join(path), _display(path[-1], value),
                    _source(path, loaded.daemon_sources, loaded.daemon_file_data,
                            loaded.flags)))
    if loaded.pump is not None:
        pump = loaded.pump
        for path, value in _leaves(pump):
            if path[:1] == ("pumps",) and len(path) > 2 and path[2] == "meta":
                continue  # below, through the sink's own config type
            out.append(("pump", ".".join(path), _display(path[-1], value),
                        _source(path, loaded.pump_sources, loaded.pump_file_data, {})))
        from pump.sinks import registry

        known = registry()
        for sink, spec in pump.pumps.items():
            cls = known[pump.sink_type(sink)]
            meta = cls.Config.model_validate(spec.meta)
            for path, value in _leaves(meta, ("pumps", sink, "meta")):
                out.append(("pump", ".".join(path), _display(path[-1], value),
                            _source(path, loaded.pump_sources, loaded.pump_file_data, {})))
    secrets = loaded.secrets()
    return [(svc, key, redact_text(value, *secrets), src) for svc, key, value, src in out]

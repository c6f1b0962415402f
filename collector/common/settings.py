"""The config base of ``collector.config`` and ``pump.config`` (type introspection in
``_types.py``, error messages in ``_config_errors.py``).

Both services read their configuration the same way: defaults, then a YAML
file (or a mapping), then environment variables, later ones winning.

- :class:`Settings` is the base of every config model (sinks' ``meta``
  included): unknown keys are errors, the model is frozen, defaults are
  validated. ``renamed`` maps old key names to new ones: an old name still
  works, with a :class:`ConfigDeprecationWarning` naming the source, the old
  and the new key (the CLIs log it once logging is set up).
- Environment variables are named after key paths (:func:`env_table`):
  ``<PREFIX><KEY>``, ``<PREFIX><KEY>_<SUBKEY>`` for a nested model. Their
  values are parsed by the type of the key they set, never as YAML
  (:func:`parse_env`): numbers, booleans (``true``/``false``/``1``/``0``/
  ``yes``/``no``) and strings as they are; lists as JSON (``["a", "b"]``) or
  comma-separated (``a,b``); mappings and models as JSON; an empty value
  unsets a key that may be null.
- Every problem is one line naming the source (the file, or ``environment
  VAR``), the key path and the rule (:func:`validate`); a secret's value is
  never shown (``***``).
- :data:`RESERVED_ENV` lists every ``COLLECTOR_*`` variable that is not a
  ``COLLECTOR_<KEY>`` of ``collector.config``; any other ``COLLECTOR_*``
  variable is an error in the daemon and the app, as any unknown
  ``COLLECTOR_PUMP_*`` variable is in the pump.
"""

from __future__ import annotations

import json
import os
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    ValidationError,
    model_validator,
)

from ._config_errors import error_lines, known_keys
from ._types import is_model, nested_model, type_arms
from .redact import remember_model

__all__ = [
    "RESERVED_ENV",
    "RESERVED_ENV_PREFIXES",
    "ConfigDeprecationWarning",
    "ConfigError",
    "ConfigWarning",
    "EnvKey",
    "HostPort",
    "Settings",
    "apply_env",
    "deprecations",
    "env_table",
    "known_keys",
    "log_deprecations",
    "parse_env",
    "read_yaml_mapping",
    "rename_keys",
    "validate",
]

# Every COLLECTOR_* variable that is not COLLECTOR_<KEY> of collector.config,
# and who reads it. The daemon and the app refuse any other COLLECTOR_* name.
RESERVED_ENV: Mapping[str, str] = {
    "COLLECTOR_CONFIG": "the config file of collector-daemon and Analytics.from_config",
    "COLLECTOR_PURE_PYTHON": "1 forces the ring's pure-Python path (ringbuf/_native.py)",
    "COLLECTOR_MONGO_PASSWORD": "the mongo sink's password (pump/sinks/mongo.py)",
    "COLLECTOR_POSTGRES_PASSWORD": "the postgres sink's password (pump/sinks/postgres.py)",
    "COLLECTOR_CHAOS_SEED": "the seed of tests/test_chaos_short.py",
}
RESERVED_ENV_PREFIXES: Mapping[str, str] = {
    "COLLECTOR_PUMP_": "collector-pump's own variables (pump/config.py)",
    "COLLECTOR_TEST_": "the test suite's settings",
}


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names source, key and rule."""


class ConfigDeprecationWarning(FutureWarning):
    """A config key (or variable) under its old name: it still works."""

    def __init__(self, source: str, old: str, new: str) -> None:
        super().__init__(f"{source}: {old!r} is deprecated; use {new!r} (same meaning)")
        self.source, self.old, self.new = source, old, new


class ConfigWarning(UserWarning):
    """Something in a config that works but deserves a line in the log (a key with
    no equivalent, a filter on a field the records do not have)."""

    def __init__(self, source: str, text: str) -> None:
        super().__init__(f"{source}: {text}")
        self.source, self.text = source, text


def _host_port(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"must be HOST:PORT (e.g. 127.0.0.1:7070), got {v!r}")
    return v


HostPort = Annotated[str, AfterValidator(_host_port)]


class Settings(BaseModel):
    """Base of every config model: unknown keys fail, frozen, defaults validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    #: old key name -> new key name (the old one still works, with a warning)
    renamed: ClassVar[Mapping[str, str]] = {}
    #: keys taken only from the environment (refused in a file, not listed as known)
    env_only: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        if cls.renamed and isinstance(data, Mapping):
            data = _renamed(cls, dict(data), cls.__name__)
        return data

    @model_validator(mode="after")
    def _remember_secrets(self) -> Any:
        remember_model(self)  # collector.common.redact hides them in every output
        return self

    def __setstate__(self, state: Any) -> None:  # a config sent to a spawned process
        super().__setstate__(state)
        remember_model(self)


def _renamed(model: type[BaseModel], data: dict[str, Any], where: str) -> dict[str, Any]:
    renamed = getattr(model, "renamed", None) or {}
    for old, new in renamed.items():
        if old not in data:
            continue
        if new in data:
            raise ConfigError(f"{where}: both {old!r} (its old name) and {new!r} are given; "
                              f"keep {new!r}")
        data[new] = data.pop(old)
        warnings.warn(ConfigDeprecationWarning(where, old, new), stacklevel=4)
    return data


@contextmanager
def deprecations() -> Iterator[list[ConfigDeprecationWarning | ConfigWarning]]:
    """Collect the renamed keys and other warnings a load reports (to log them once
    logging is set up)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigDeprecationWarning)
        warnings.simplefilter("always", ConfigWarning)
        found: list[ConfigDeprecationWarning | ConfigWarning] = []
        yield found
    for w in caught:
        if isinstance(w.message, ConfigDeprecationWarning | ConfigWarning):
            found.append(w.message)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def log_deprecations(found: Sequence[ConfigDeprecationWarning | ConfigWarning],
                     log: Any) -> None:
    """One warning line per renamed key or other warning (``log`` is a
    :class:`collector.common.log.Logger`)."""
    for w in found:
        if isinstance(w, ConfigDeprecationWarning):
            log.warning("A config key was renamed; its old name still works.",
                        source=w.source, old=w.old, new=w.new)
        else:
            log.warning(w.text, source=w.source)


def parse_env(raw: str, annotation: Any) -> Any:
    """An environment value as the type of its key wants it (module doc); ValueError if not."""
    arms = type_arms(annotation)
    if raw.strip() == "" and type(None) in arms:
        return None
    origins = {typing.get_origin(a) or a for a in arms}
    if origins & {list, tuple, set, frozenset, Sequence}:
        text = raw.strip()
        if text.startswith("["):
            return _json(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    if origins & {dict, Mapping} or any(is_model(a) for a in arms):
        return _json(raw)
    return raw  # scalars: pydantic parses "5", "true", "2.5" by the key's type


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None


# -- environment ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EnvKey:
    path: tuple[str, ...]
    annotation: Any
    old: str | None = None  # set when the variable is a deprecated name


def env_table(model: type[BaseModel], prefix: str, path: tuple[str, ...] = (),
              exclude: frozenset[str] = frozenset()) -> dict[str, EnvKey]:
    """Variable name -> key path for every key of ``model`` (nested models flattened)."""
    table: dict[str, EnvKey] = {}
    for name, field in model.model_fields.items():
        if name in exclude:
            continue
        table[prefix + name.upper()] = EnvKey((*path, name), field.annotation)
        sub = nested_model(field.annotation)
        if sub is not None:
            table.update(env_table(sub, f"{prefix}{name.upper()}_", (*path, name)))
    for old, new in (getattr(model, "renamed", None) or {}).items():
        field = model.model_fields[new]
        table.setdefault(prefix + old.upper(), EnvKey((*path, new), field.annotation, old))
    return table


def apply_env(data: dict[str, Any], table: Mapping[str, EnvKey], environ: Mapping[str, str],
              sources: dict[tuple[str, ...], str]) -> list[str]:
    """Set every variable of ``table`` found in ``environ`` into ``data``.

    Records key path -> variable in ``sources``; returns problem lines.
    """
    problems = []
    for var in sorted(set(table) & set(environ)):
        key = table[var]
        where = f"environment {var} ({'.'.join(key.path)})"
        if key.old is not None:
            new = var[: len(var) - len(key.old)] + key.path[-1].upper()
            warnings.warn(ConfigDeprecationWarning(f"environment {var}", var, new),
                          stacklevel=2)
        try:
            value = parse_env(environ[var], key.annotation)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        node = data
        for part in key.path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = dict(child) if isinstance(child, Mapping) else {}
                node[part] = child
            node = child
        node[key.path[-1]] = value
        sources[key.path] = var
    return problems


def rename_keys(model: type[BaseModel], data: Any, label: str,
                path: tuple[str, ...] = ()) -> None:
    """Old key names in ``data`` (from a file) -> new ones, in place, with warnings."""
    if not isinstance(data, dict):
        return
    where = f"{label}: {'.'.join(path)}" if path else label
    _renamed(model, data, where)
    for name, field in model.model_fields.items():
        value = data.get(name)
        sub = nested_model(field.annotation)
        if sub is not None:
            rename_keys(sub, value, label, (*path, name))
            continue
        arms = type_arms(field.annotation)
        if len(arms) == 1 and typing.get_origin(arms[0]) is dict and isinstance(value, dict):
            inner = typing.get_args(arms[0])[1]
            if is_model(inner):
                for k, v in value.items():
                    rename_keys(inner, v, label, (*path, name, str(k)))


# -- validation ------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: Mapping[str, Any], label: str,
             sources: Mapping[tuple[str, ...], str],
             prefix: tuple[str, ...] = ()) -> M:
    """``model.model_validate(data)``, or :class:`ConfigError` with one line per problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(error_lines(exc, model, label, sources, prefix))) from None


def read_yaml_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping; :class:`ConfigError` otherwise."""
    label = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read the config file: {exc.strerror}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(
            f"{label}: the top level must be a mapping of keys, got {type(loaded).__name__}"
        )
    return dict(loaded)


def env_name(name: str) -> str:
    """A key or sink name as it appears in a variable name: upper case, '-' and '.' as '_'."""
    return name.upper().replace("-", "_").replace(".", "_")

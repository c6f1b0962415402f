"""The one-line messages of config validation errors: source, key path, rule, and
the refused value only where it cannot be a secret (``collector.common.settings``)."""

from __future__ import annotations

import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from ._types import is_model, is_secret, type_arms
from .redact import MASK, scrub


def _walk(model: type[BaseModel], loc: Sequence[Any]) -> tuple[Any, FieldInfo | None]:
    """What a validation error location points at: (the type there, the last field)."""
    current: Any = model
    field: FieldInfo | None = None
    parts = [str(p) for p in loc]
    while parts:
        if not is_model(current):
            return None, None
        field = current.model_fields.get(parts.pop(0))
        if field is None:
            return None, None
        current = _single(field.annotation)
        while typing.get_origin(current) in (dict, list, tuple) and parts:
            args = typing.get_args(current)
            parts.pop(0)  # a mapping key or a list index
            inner = args[0] if len(args) == 2 and args[1] is Ellipsis else args[-1]
            current = _single(inner)
    return current, field


def _single(annotation: Any) -> Any:
    arms = [a for a in type_arms(annotation) if a is not type(None)]
    return arms[0] if len(arms) == 1 else None


def known_keys(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys allowed where the unknown key ``loc`` was found."""
    owner, _ = _walk(model, loc[:-1])
    if not is_model(owner):
        return []
    hidden = getattr(owner, "env_only", frozenset())
    return sorted(k for k in owner.model_fields if k not in hidden)


def error_lines(exc: ValidationError, model: type[BaseModel], label: str,
                sources: Mapping[tuple[str, ...], str],
                prefix: tuple[str, ...] = ()) -> list[str]:
    """One line per problem: source (file or variable), key path, rule; no secret shown."""
    lines = []
    for err in exc.errors():
        rel = tuple(err["loc"])
        loc = (*prefix, *(str(p) for p in rel))
        path = ".".join(loc) or "(top level)"
        src = sources.get(loc)
        where = f"environment {src} ({path})" if src else f"{label}: {path}"
        if err["type"] == "value_error" and not rel:
            rule = scrub(err["msg"].removeprefix("Value error, "))
            lines.append(f"{label}: {path}: {rule}" if loc else f"{label}: {rule}")
            continue
        if err["type"] == "extra_forbidden":
            known = known_keys(model, rel)
            rule = "unknown key" + (f"; known keys: {', '.join(known)}" if known else "")
        else:
            rule = err["msg"]
            if err["type"] != "missing" and "input" in err:
                rule = _with_input(rule, err["input"], model, rel)
        lines.append(f"{where}: {scrub(rule)}")
    return lines


def _with_input(rule: str, given: Any, model: type[BaseModel], rel: Sequence[Any]) -> str:
    """The rule and the value it refused, unless that value may hold a secret: a
    secret key's value (of any type) is ``***`` and hidden inside the rule too; a
    list or mapping is never shown (it may hold one); neither is a value whose key
    cannot be told."""
    _, field = _walk(model, rel)
    if field is not None and is_secret(field.annotation):
        for leaf in _leaves(given):
            if len(leaf) >= 3:
                rule = rule.replace(leaf, MASK)
        return f"{rule} (got '{MASK}')"
    if (field is None or not isinstance(given, str | int | float | bool | None)
            or not _scalar(field.annotation)):
        return rule
    return f"{rule} (got {given!r})"


def _scalar(annotation: Any) -> bool:
    """A key holding one value, not a model, mapping or list (whose text may hold a secret)."""
    return all((a is not Any and not is_model(a) and typing.get_origin(a) is None)
               or typing.get_origin(a) is typing.Literal for a in type_arms(annotation))


def _leaves(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            yield from _leaves(v)
    elif isinstance(value, list | tuple | set):
        for v in value:
            yield from _leaves(v)
    elif value is not None:
        yield str(value)

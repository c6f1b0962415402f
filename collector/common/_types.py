"""Type introspection for the config base: the alternatives of an annotation,
whether it holds a nested model or a secret (``collector.common.settings``)."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, SecretStr


def type_arms(annotation: Any) -> list[Any]:
    """The alternatives of a type (``X | None`` -> [X, None]), Annotated unwrapped."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (Union, types.UnionType):
        out = []
        for arm in typing.get_args(annotation):
            out.extend(type_arms(arm))
        return out
    return [annotation]


def is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model class of a key holding one nested model (``source:``), else None."""
    arms = [a for a in type_arms(annotation) if a is not type(None)]
    return arms[0] if len(arms) == 1 and is_model(arms[0]) else None


def is_secret(annotation: Any) -> bool:
    def secret(tp: Any) -> bool:
        if isinstance(tp, type) and issubclass(tp, SecretStr):
            return True
        return any(secret(a) for a in typing.get_args(tp))
    return any(secret(a) for a in type_arms(annotation))

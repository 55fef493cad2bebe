"""The call log of the fake `aiter`: every call with its arguments and the tensor it returned."""

from __future__ import annotations

from typing import NamedTuple, TypeVar

T = TypeVar("T")


class Call(NamedTuple):
    name: str
    args: tuple[object, ...]
    kwargs: dict[str, object]
    result: object


CALLS: list[Call] = []


def record(name: str, result: T, *args: object, **kwargs: object) -> T:
    """Log a call of `name` and hand back `result`, which the fake function returns."""
    CALLS.append(Call(name, args, kwargs, result))
    return result

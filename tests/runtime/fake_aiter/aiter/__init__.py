"""Fake `aiter`: the module paths and names the binding imports, recording calls in `CALLS`."""

from __future__ import annotations

import enum

from ._recorder import CALLS, Call
from .utility import dtypes

__version__ = "0.1.7.post2+fake"
__all__ = ["CALLS", "ActivationType", "Call", "QuantType", "dtypes"]


class _PybindLikeEnum(enum.Enum):
    """Like AITER's pybind11 enums: `int()` gives the value, but a member never equals an int
    (nor our IntEnum mirrors), so code that compares across the two types fails in tests."""

    def __int__(self) -> int:
        return int(self.value)


class ActivationType(_PybindLikeEnum):
    No = -1
    Silu = 0
    Gelu = 1
    Swiglu = 2


class QuantType(_PybindLikeEnum):
    No = 0
    per_Tensor = 1
    per_Token = 2
    per_1x32 = 3
    per_1x128 = 4
    per_128x128 = 5

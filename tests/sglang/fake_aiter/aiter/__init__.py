"""Fake `aiter` for the SGLang integration tests: enums, `fused_moe` (recording), shuffles."""

from __future__ import annotations

import enum

from moe_runtime import enums

from .utility import dtypes

__version__ = "0.1.20.post1+fake-sglang"
__all__ = ["CALLS", "ActivationType", "QuantType", "dtypes", "get_hip_quant"]

# Every fused_moe call: a dict of every parameter of its signature (defaults filled in).
CALLS: list[dict[str, object]] = []


class _PybindLikeEnum(enum.Enum):
    """Like AITER's pybind11 enums: `int()` gives the value, a member never equals an int."""

    def __int__(self) -> int:
        return int(self.value)


# AITER's members by name and value, as moe_runtime.enums mirrors them (Situv2 from v0.1.19), but
# of AITER-like classes of their own: the runners must pass these, not the mirrors.
ActivationType = _PybindLikeEnum(
    "ActivationType", [(m.name, m.value) for m in enums.ActivationType], module=__name__
)
QuantType = _PybindLikeEnum(
    "QuantType", [(m.name, m.value) for m in enums.QuantType], module=__name__
)


def get_hip_quant(quant_type: QuantType, scale_type: object = None) -> object:
    """AITER's activation quantizer factory, with the `scale_type` keyword whose presence SGLang
    0.5.23 probes to enable its MORI mxfp8 wire (token_dispatcher/moriep.py:130-150). The tests
    emulate the dispatch, so the quantizer itself is never called."""

    def quantize(*args: object, **kwargs: object) -> object:
        raise NotImplementedError("the fake AITER does not quantize activations")

    return quantize

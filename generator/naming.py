"""The one naming function: a combination's module name is its three axis names joined by `__`."""

from __future__ import annotations

from generator.model import Combination

SEPARATOR = "__"


def module_name(combination: Combination) -> str:
    """`{a2a}__{quant}__{dispatch}`, e.g. `mori__fp8_block__mori_normal_fp8`."""
    return SEPARATOR.join(combination.key)

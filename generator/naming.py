"""The one naming function: a combination's module name is its three axis names joined by `__`."""

from __future__ import annotations

from generator.model import Combination

SEPARATOR = "__"
# A backend, quant method or dispatch format name: lower-case words joined by single `_` (no `__`
# inside, no `_` at either end), so that a module name splits back into its three names.
NAME = r"[a-z][a-z0-9]*(_[a-z0-9]+)*"
MODULE = SEPARATOR.join((NAME, NAME, NAME))


def module_name(combination: Combination) -> str:
    """`{a2a}__{quant}__{dispatch}`, e.g. `mori__fp8_block__mori_normal_fp8`."""
    return SEPARATOR.join(combination.key)

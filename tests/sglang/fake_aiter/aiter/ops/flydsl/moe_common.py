"""Fake `aiter.ops.flydsl.moe_common`: the gate/up layout names SGLang passes as `gate_mode`."""

from __future__ import annotations

import enum


class GateMode(enum.Enum):
    SEPARATED = "separated"
    INTERLEAVE = "interleave"

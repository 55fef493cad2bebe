"""AITER's enums, mirrored by member name and value (ActivationType, QuantType, GateMode).

Kept free of any kernel import so that `moe_runtime.types` and the reference can use them anywhere;
`moe_runtime.kernels` re-exports these, or AITER's own classes when AITER is the binding.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ActivationType(IntEnum):
    No = -1
    Silu = 0
    Gelu = 1
    Swiglu = 2
    # AITER v0.1.19 (csrc/include/aiter_enum.h:13): SiTU with beta, linear_beta; a16w4 kernels only.
    Situv2 = 3


class QuantType(IntEnum):
    No = 0
    per_Tensor = 1
    per_Token = 2
    per_1x32 = 3
    per_1x128 = 4
    # AITER treats per_128x128 as per_1x128: 128x128 weight blocks, 1x128 activation groups.
    per_128x128 = 5


class GateMode(StrEnum):
    """How `w13` holds the gate and up rows: AITER's `aiter.ops.flydsl.moe_common.GateMode`
    (AITER v0.1.14 onwards), by member name and string value (the value is what `fused_moe`'s
    `gate_mode` keyword takes).

    SEPARATED: rows `0..I-1` are the gate, `I..2I-1` the up projection (every kernel's default).
    INTERLEAVE: row `2i` is gate row `i`, row `2i + 1` up row `i` (moe_common.py: "Weight rows
    interleave gate/up (gate[0], up[0], gate[1], ...)"), as gpt-oss checkpoints store them.
    """

    SEPARATED = "separated"
    INTERLEAVE = "interleave"

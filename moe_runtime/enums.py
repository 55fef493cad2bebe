"""AITER's enums, mirrored by member name and integer value (aiter.ActivationType, aiter.QuantType).

Kept free of any kernel import so that `moe_runtime.types` and the reference can use them anywhere;
`moe_runtime.kernels` re-exports these, or AITER's own classes when AITER is the binding.
"""

from __future__ import annotations

from enum import IntEnum


class ActivationType(IntEnum):
    No = -1
    Silu = 0
    Gelu = 1
    Swiglu = 2


class QuantType(IntEnum):
    No = 0
    per_Tensor = 1
    per_Token = 2
    per_1x32 = 3
    per_1x128 = 4
    # AITER treats per_128x128 as per_1x128: 128x128 weight blocks, 1x128 activation groups.
    per_128x128 = 5

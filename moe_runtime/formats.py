"""The dispatch formats by name, and the facts of each that every dispatcher here keys on.

A runtime fact, not test support: the emulated dispatchers (`moe_runtime.testing.emulate`), the
ones across real processes (`moe_runtime.distributed`) and the adapters of the real libraries
must agree on the names, the wire of each format (what a sender puts on it, how many columns a
scale covers), which combine input each takes back, SGLang's `expected_m` and what input they
refuse, so all of them read these from here. tests/runtime/test_formats_match_matrix.py holds
them to schema/amd.yaml.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from moe_runtime.quant import (
    FP8,
    FP8_GROUP,
    MXFP4_GROUP,
    quantize_fp8_1x128,
    quantize_fp8_per_row,
    quantize_mxfp4,
    quantize_mxfp8,
)
from moe_runtime.types import (
    DeepEPLLCombineInput,
    DeepEPNormalCombineInput,
    MoriEPLLCombineInput,
    MoriEPNormalCombineInput,
    StandardCombineInput,
)

STANDARD = "standard"
DEEPEP_NORMAL = "deepep_normal"
DEEPEP_LL = "deepep_ll"
DEEPEP_LL_FP8 = "deepep_ll_fp8"
MORI_NORMAL = "mori_normal"
MORI_LL = "mori_ll"
MORI_NORMAL_FP8 = "mori_normal_fp8"
MORI_NORMAL_FP4 = "mori_normal_fp4"
MORI_LL_FP8 = "mori_ll_fp8"
MORI_LL_FP4 = "mori_ll_fp4"
MORI_V2 = "mori_v2"
MORI_V2_FP8 = "mori_v2_fp8"
MORI_V2_FP4 = "mori_v2_fp4"
MORI_NORMAL_MXFP8 = "mori_normal_mxfp8"
MORI_LL_MXFP8 = "mori_ll_mxfp8"
MORI_V2_MXFP8 = "mori_v2_mxfp8"
MORI_NORMAL_FP8_TOKEN = "mori_normal_fp8_token"
MORI_LL_FP8_TOKEN = "mori_ll_fp8_token"

# Wire of each MORI format: bf16, fp8 per 1x128, mxfp4 per 1x32, mxfp8 per 1x32 (e8m0 scales) or
# fp8 per row (one fp32 scale per row).
MORI_WIRES = {
    MORI_NORMAL: "bf16",
    MORI_LL: "bf16",
    MORI_NORMAL_FP8: "fp8",
    MORI_NORMAL_FP4: "fp4",
    MORI_LL_FP8: "fp8",
    MORI_LL_FP4: "fp4",
    MORI_V2: "bf16",
    MORI_V2_FP8: "fp8",
    MORI_V2_FP4: "fp4",
    MORI_NORMAL_MXFP8: "mxfp8",
    MORI_LL_MXFP8: "mxfp8",
    MORI_V2_MXFP8: "mxfp8",
    MORI_NORMAL_FP8_TOKEN: "fp8_token",
    MORI_LL_FP8_TOKEN: "fp8_token",
}
DEEPEP_LL_FORMATS = frozenset({DEEPEP_LL, DEEPEP_LL_FP8})
MORI_LL_FORMATS = frozenset({MORI_LL, MORI_LL_FP8, MORI_LL_FP4, MORI_LL_MXFP8, MORI_LL_FP8_TOKEN})
MORI_V2_FORMATS = frozenset({MORI_V2, MORI_V2_FP8, MORI_V2_FP4, MORI_V2_MXFP8})
# The order is the distributed dispatcher's header code for a format.
FORMATS: tuple[str, ...] = (STANDARD, DEEPEP_NORMAL, DEEPEP_LL, DEEPEP_LL_FP8, *MORI_WIRES)

COMBINE_INPUT_TYPES: dict[str, type] = {
    STANDARD: StandardCombineInput,
    DEEPEP_NORMAL: DeepEPNormalCombineInput,
    DEEPEP_LL: DeepEPLLCombineInput,
    DEEPEP_LL_FP8: DeepEPLLCombineInput,
    **{
        name: MoriEPLLCombineInput if name in MORI_LL_FORMATS else MoriEPNormalCombineInput
        for name in MORI_WIRES
    },
}


def deepep_ll_fp8_wire(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a DeepEP sender puts on the low-latency fp8 wire: per 128 elements of a row, the amax
    (at least 1e-4), the values times `448 / amax` cast to e4m3fn, and the fp32 scale `amax` times
    the fp32 `1 / 448` (DeepEP v1.2.1 csrc/kernels/internode_ll.cu:118-141, `kFP8Margin` and
    `calculate_fp8_scales` in utils.cuh:450-476). Bit for bit what a built v1.2.1 sends
    (benchmarks/RESULTS.md); `quant.quantize_fp8_1x128`'s exact `amax / 448` is an ulp away in
    about half the scales, and its quotient moves a few values in ten thousand by one fp8 step.

    Returns (fp8 `[..., H]`, fp32 scales `[..., H/128]`), the scales row-major (DeepEP hands them
    over column-major: the dispatchers lay them out)."""
    groups = torch.unflatten(hidden.float(), -1, (-1, FP8_GROUP))
    amax = groups.abs().amax(dim=-1, keepdim=True).clamp(min=1e-4)
    # Tensor by tensor, not by a Python float: correctly rounded on every device (see
    # quant._dynamic_scale), as the kernel's fp32 division and product are.
    values = (groups * (torch.full_like(amax, 448.0) / amax)).to(FP8).flatten(-2)
    scale = amax * torch.full_like(amax, 1.0 / 448.0)
    return values, scale.squeeze(-1)


WireSender = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def _as_it_is(hidden: torch.Tensor) -> tuple[torch.Tensor, None]:
    return hidden, None


# What a sender puts on each MORI wire: its rows quantized per row group, or as they are.
MORI_SENDERS: Mapping[str, WireSender] = {
    "bf16": _as_it_is,
    "fp8": quantize_fp8_1x128,
    "fp4": quantize_mxfp4,
    # AITER's per_1x32 quant with scale_type e8m0 (SGLang 0.5.23 moriep.py:794-814).
    "mxfp8": quantize_mxfp8,
    # AITER's per_Token quant (vLLM mori_prepare_finalize.py 1dbff2c76f:102-119).
    "fp8_token": quantize_fp8_per_row,
}


# Columns one scale of each wire covers (0: one scale per row, or none).
_WIRE_GROUPS = {
    "bf16": 0,
    "fp8": FP8_GROUP,
    "fp4": MXFP4_GROUP,
    "mxfp8": MXFP4_GROUP,
    "fp8_token": 0,
}


def wire_of(format: str) -> str:
    """The wire of dispatch format `format`, named as `MORI_SENDERS` names it: a MORI format's,
    fp8 (per 1x128) for DeepEP's low-latency fp8, bf16 for the others."""
    if format == DEEPEP_LL_FP8:
        return "fp8"
    return MORI_WIRES.get(format, "bf16")


def wire_group(format: str) -> int:
    """Columns one scale covers on the wire of dispatch format `format`, which H must be a
    multiple of (0: no such constraint)."""
    return _WIRE_GROUPS[wire_of(format)]


def routing_problems(
    hidden: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, num_experts: int, ep_size: int
) -> list[str]:
    """What is wrong with activations `[T, H]` and their routing (int32 ids, float32 weights,
    `[T, K]`) for a dispatch over `ep_size` ranks, as every dispatcher here words it; empty when
    nothing is. The row count and id range are checked only once the shapes are right."""
    problems = []
    if hidden.dim() != 2:
        problems.append(f"hidden_states must be [T, H], got {tuple(hidden.shape)}")
    if ids.dim() != 2 or ids.dtype != torch.int32:
        problems.append(f"topk_ids must be int32 [T, K], got {ids.dtype} {tuple(ids.shape)}")
    if weights.dtype != torch.float32 or weights.shape != ids.shape:
        problems.append(
            f"topk_weights must be float32 shaped like topk_ids {tuple(ids.shape)}, got "
            f"{weights.dtype} {tuple(weights.shape)}"
        )
    if ep_size < 1 or num_experts < 1 or num_experts % ep_size:
        problems.append(
            f"num_experts ({num_experts}) must be a positive multiple of ep_size ({ep_size})"
        )
    if problems:
        return problems
    if hidden.shape[0] != ids.shape[0]:
        problems.append(f"hidden_states has {hidden.shape[0]} rows, topk_ids has {ids.shape[0]}")
    if ids.numel() and int(ids.max()) >= num_experts:
        problems.append(f"topk_ids must be < num_experts ({num_experts})")
    return problems


def deepep_ll_expected_m(sent: int, ep_size: int, top_k: int, num_experts: int) -> int:
    """`expected_m` of a low-latency dispatch output, as SGLang's DeepEP dispatcher computes it
    from the tokens this rank sent: `(T_r * group_size * K + E) // E`."""
    return (sent * ep_size * top_k + num_experts) // num_experts

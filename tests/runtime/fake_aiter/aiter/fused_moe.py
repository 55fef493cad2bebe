"""Fake `aiter.fused_moe`: v0.1.7.post2's signature (no `swiglu_limit`), and newer ones that tests
swap in for `fused_moe` (v0.1.14's, v0.1.20.post1's, and one with only `swiglu_limit` added)."""

from __future__ import annotations

import torch

from . import ActivationType, QuantType
from ._recorder import record


def fused_moe(
    hidden_states: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    topk_weight: torch.Tensor,
    topk_ids: torch.Tensor,
    expert_mask: torch.Tensor | None = None,
    activation: ActivationType = ActivationType.Silu,
    quant_type: QuantType = QuantType.No,
    doweight_stage1: bool = False,
    w1_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
    a1_scale: torch.Tensor | None = None,
    a2_scale: torch.Tensor | None = None,
    block_size_M: int | None = None,
    num_local_tokens: torch.Tensor | None = None,
    moe_sorting_dispatch_policy: int = 0,
    dtype: torch.dtype | None = None,
    hidden_pad: int = 0,
    intermediate_pad: int = 0,
    bias1: torch.Tensor | None = None,
    bias2: torch.Tensor | None = None,
) -> torch.Tensor:
    out = torch.zeros(hidden_states.shape[0], w2.shape[1], dtype=hidden_states.dtype)
    return record("fused_moe", out, hidden_states, w1, w2, topk_weight, topk_ids)


def fused_moe_with_swiglu_limit(
    hidden_states: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    topk_weight: torch.Tensor,
    topk_ids: torch.Tensor,
    expert_mask: torch.Tensor | None = None,
    activation: ActivationType = ActivationType.Silu,
    quant_type: QuantType = QuantType.No,
    *,
    swiglu_limit: float | None = None,
) -> torch.Tensor:
    """Newer AITER adds keywords such as `swiglu_limit`; tests swap this in for `fused_moe`."""
    out = torch.zeros(hidden_states.shape[0], w2.shape[1], dtype=hidden_states.dtype)
    return record("fused_moe", out, hidden_states, w1, w2, topk_weight, topk_ids)


def fused_moe_v0_1_14(
    hidden_states: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    topk_weight: torch.Tensor,
    topk_ids: torch.Tensor,
    expert_mask: torch.Tensor | None = None,
    activation: ActivationType = ActivationType.Silu,
    quant_type: QuantType = QuantType.No,
    doweight_stage1: bool = False,
    w1_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
    a1_scale: torch.Tensor | None = None,
    a2_scale: torch.Tensor | None = None,
    block_size_M: int | None = None,
    num_local_tokens: torch.Tensor | None = None,
    moe_sorting_dispatch_policy: int = 0,
    dtype: torch.dtype | None = None,
    hidden_pad: int = 0,
    intermediate_pad: int = 0,
    bias1: torch.Tensor | None = None,
    bias2: torch.Tensor | None = None,
    splitk: int = 0,
    swiglu_limit: float = 0.0,
    gate_mode: str | None = "separated",
) -> torch.Tensor:
    """v0.1.14's signature (aiter/fused_moe.py:146-174): `splitk`, `swiglu_limit`, `gate_mode`
    added. Records its keywords, which tests read back from `CALLS`."""
    out = torch.zeros(hidden_states.shape[0], w2.shape[1], dtype=torch.bfloat16)
    return record(
        "fused_moe", out, hidden_states, w1, w2, topk_weight, topk_ids,
        activation=activation, quant_type=quant_type, swiglu_limit=swiglu_limit,
        gate_mode=gate_mode,
    )  # fmt: skip


def fused_moe_v0_1_20(
    hidden_states: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    topk_weight: torch.Tensor,
    topk_ids: torch.Tensor,
    expert_mask: torch.Tensor | None = None,
    activation: ActivationType = ActivationType.Silu,
    quant_type: QuantType = QuantType.No,
    doweight_stage1: bool = False,
    w1_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
    a1_scale: torch.Tensor | None = None,
    a2_scale: torch.Tensor | None = None,
    block_size_M: int | None = None,
    num_local_tokens: torch.Tensor | None = None,
    moe_sorting_dispatch_policy: int = 0,
    dtype: torch.dtype | None = None,
    hidden_pad: int = 0,
    intermediate_pad: int = 0,
    bias1: torch.Tensor | None = None,
    bias2: torch.Tensor | None = None,
    splitk: int = 0,
    swiglu_limit: float | None = None,
    beta: float | None = None,
    linear_beta: float | None = None,
    gate_mode: str | None = "separated",
    shared_w1: torch.Tensor | None = None,
    shared_w2: torch.Tensor | None = None,
    shared_w1_scale: torch.Tensor | None = None,
    shared_w2_scale: torch.Tensor | None = None,
    shared_expert_id: int = -1,
) -> torch.Tensor:
    """v0.1.20.post1's signature (aiter/fused_moe.py:454-489): `beta`, `linear_beta` (v0.1.19)
    and the `shared_w*` keywords added."""
    out = torch.zeros(hidden_states.shape[0], w2.shape[1], dtype=torch.bfloat16)
    return record("fused_moe", out, hidden_states, w1, w2, topk_weight, topk_ids,
                  gate_mode=gate_mode)

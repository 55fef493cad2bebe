"""Fake `aiter.fused_moe`: v0.1.7.post2's signature (no `swiglu_limit`), and a newer one."""

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

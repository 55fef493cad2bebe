"""The float64 MoE math of docs/aiter_fused_moe.md over some experts, for the EP launcher.

No rounding point and no activation quantization: every routed (token, slot) pair of the given
experts runs in float64 on the dequantized weights. Each rank computes its own experts' share of
every token, and a sum over ranks gives the dense layer, so no rank holds all the weights.
(The tests check it against their independent oracle, moe_runtime/testing/dense.py.)
"""

from __future__ import annotations

import torch

from moe_runtime.testing.weights import dequantized_weights, slice_experts
from moe_runtime.types import ExpertWeights

_SWIGLU_LIMIT = 7.0  # AITER's default when swiglu_limit is 0
_SWIGLU_ALPHA = 1.702


def _activate(name: str, h: torch.Tensor, inter: int, limit: float) -> torch.Tensor:
    gate, up = h[:, :inter], h[:, inter:]
    if name == "swiglu":
        gate = gate.clamp(max=limit)
        return gate * torch.sigmoid(_SWIGLU_ALPHA * gate) * (up.clamp(-limit, limit) + 1)
    if name == "silu":
        return gate * torch.sigmoid(gate) * up
    if name == "gelu":
        return 0.5 * gate * (1 + torch.erf(gate / 2**0.5)) * up
    raise ValueError(f"activation must be silu, gelu or swiglu, got {name!r}")


def expert_share(
    hidden_states: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    weights: ExpertWeights,
    quant_method: str,
    *,
    first_expert: int,
    activation: str,
    swiglu_limit: float = 0.0,
) -> torch.Tensor:
    """float64 `[T, H]`: the weighted outputs of experts `[first_expert, first_expert + L)` (the
    L experts of `weights`, gate and up rows stacked) for every pair routed to them."""
    x = hidden_states.double()
    out = torch.zeros(x.shape[0], weights.w2_weight.shape[1], dtype=torch.float64, device=x.device)
    limit = swiglu_limit if swiglu_limit > 0 else _SWIGLU_LIMIT
    ids = topk_ids.long()
    for local in range(weights.num_local_experts):
        tokens, slots = (ids == first_expert + local).nonzero(as_tuple=True)
        if tokens.numel() == 0:
            continue
        # One expert at a time: float64 copies of all of a rank's experts would not fit.
        w13, w2 = dequantized_weights(slice_experts(weights, local, local + 1), quant_method)
        h = x[tokens] @ w13[0].T
        if weights.b13 is not None:
            h = h + weights.b13[local].double()
        y = _activate(activation, h, w2.shape[2], limit) @ w2[0].T
        if weights.b2 is not None:
            y = y + weights.b2[local].double()
        out.index_add_(0, tokens, y * topk_weights[tokens, slots].double().unsqueeze(1))
    return out

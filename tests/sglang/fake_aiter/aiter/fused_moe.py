"""Fake `aiter.fused_moe`: v0.1.7.post2's signature plus the keywords SGLang 0.5.23 passes or probes
for (`swiglu_limit`, `gate_mode` from v0.1.14, `beta`, `linear_beta` from v0.1.19, and `output`,
newer), with AITER's defaults; records the bound call, computes the result with moe_runtime's
reference kernel (AITER's semantics on the logical layout)."""

from __future__ import annotations

import inspect

import torch

from moe_runtime import enums

from . import CALLS, ActivationType, QuantType


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
    swiglu_limit: float | None = None,
    beta: float | None = None,
    linear_beta: float | None = None,
    gate_mode: str = "separated",
    output: torch.Tensor | None = None,
) -> torch.Tensor:
    # Imported here: moe_runtime.kernels imports this module when it binds "AITER".
    from moe_runtime.kernels import reference

    call = dict(locals())
    del call["reference"]
    CALLS.append(call)
    # AITER reads per_1x32 scales as the shuffled 2-D matrices SGLang's weight processing leaves;
    # the tests hold such a matrix as the logical scale's rows, which the reference reads 3-D.
    w1_scale, w2_scale = _logical(w1_scale, w1), _logical(w2_scale, w2)
    out = reference.fused_moe(
        hidden_states,
        w1,
        w2,
        topk_weight,
        topk_ids,
        expert_mask=expert_mask,
        activation=enums.ActivationType(int(activation)),
        quant_type=enums.QuantType(int(quant_type)),
        doweight_stage1=doweight_stage1,
        w1_scale=w1_scale,
        w2_scale=w2_scale,
        a1_scale=a1_scale,
        a2_scale=a2_scale,
        num_local_tokens=num_local_tokens,
        dtype=dtype,
        hidden_pad=hidden_pad,
        intermediate_pad=intermediate_pad,
        bias1=bias1,
        bias2=bias2,
        swiglu_limit=0.0 if swiglu_limit is None else swiglu_limit,
        beta=beta,
        linear_beta=linear_beta,
        gate_mode=gate_mode,
        output=output,
    )
    call["result"] = out
    return out


PARAMETERS = tuple(inspect.signature(fused_moe).parameters)


def _logical(scale: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor | None:
    """A 2-D `[L * rows, groups]` weight scale as the `[L, rows, groups]` the reference reads."""
    if scale is None or scale.dim() != 2:
        return scale
    return scale.view(weight.shape[0], -1, scale.shape[-1])

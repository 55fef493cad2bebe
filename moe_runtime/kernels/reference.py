"""AITER's `fused_moe` in plain PyTorch, on any device (the contract of docs/aiter_fused_moe.md).

The kernel works on (token, slot) pairs: pair (t, k) routes row t of the activations to local expert
`e = cumsum(expert_mask)[topk_ids[t, k]] - 1` (or the id itself without a mask) with router weight
`topk_weight[t, k]`. Each pair goes through

    h = x[t] @ W1[e].T  (fp32)          [* w if doweight_stage1]   [+ bias1[e]]
    a = act(gate) * up  (g1u1)   or   act(h)  (g1u0)
    a = round(a to the output dtype), then quantize/dequantize per quant type
        (per_1x32: mxfp4 for fp4 weights, none for fp4 weights with Swiglu, mxfp8 for fp8 weights)
    y = a @ W2[e].T  (fp32)  [+ bias2[e]]   [* w unless doweight_stage1]

where gate and up are `h[:I]` and `h[I:]` (`gate_mode` SEPARATED, the default) or `h[0::2]` and
`h[1::2]` (INTERLEAVE: w13's gate and up rows alternate), and `out[t]` is the fp32 sum of its
pairs' `y`, cast once to the output dtype. Pairs whose mask
entry is 0, and rows at or beyond `num_local_tokens`, contribute nothing (those rows are zeros).

Two modes, chosen at construction:
- default: validates values (negative or out-of-range ids, the mask's sum, `num_local_tokens`) with
  a host sync and gathers each expert's pairs, so the work follows the routing;
- graph-safe: no host synchronisation and no data-dependent shape, so a CUDA graph can capture it.
  Every expert runs over every row and a per-pair select keeps the routed results. Only host-side
  (dtype and shape) checks remain; ids outside the mask contribute nothing instead of raising, and
  a mask entry other than 1 (2, -1) deselects its id rather than shifting the experts after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from moe_runtime import quant
from moe_runtime.enums import ActivationType, GateMode, QuantType
from moe_runtime.kernels.rounding import NEWEST, Mxfp4ActivationRule, Rounding

_OUT_DTYPES = (torch.bfloat16, torch.float16)
_FLOAT_INPUT_DTYPES = (torch.bfloat16, torch.float16)
_DEFAULT_SWIGLU_LIMIT = 7.0
_SWIGLU_ALPHA = 1.702
# AITER quantizes activations to e4m3fnuz on gfx942 and e4m3fn on gfx950; off ROCm we use e4m3fn.
_ACTIVATION_FP8 = quant.FP8
# The keywords newer than AITER v0.1.7.post2's fused_moe that this kernel takes (it declares them;
# moe_runtime.kernels binds them as the reference's capabilities, a test holds them to __call__).
KEYWORDS = frozenset(
    {"moe_sorting_dispatch_policy", "swiglu_limit", "gate_mode", "beta", "linear_beta", "output"}
)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True, slots=True)
class _Problem:
    """The sizes and switches of one call, decided from shapes and dtypes only (no device data)."""

    tokens: int  # M
    top_k: int  # K
    hidden: int  # H (logical, unpacked)
    inter: int  # I (logical, unpacked)
    experts: int  # L
    g1u1: bool
    out_dtype: torch.dtype
    activation: ActivationType
    quant_type: QuantType
    prequantized: bool  # hidden_states arrive already quantized (fp8 or fp4x2)
    # per_1x32 only (None otherwise): what each stage reads of its input, by the rounding rule.
    stage1: Rounding | None
    stage2: Rounding | None
    interleaved: bool  # gate_mode INTERLEAVE: w1's gate and up rows alternate
    mxfp8: bool  # per_1x32 with fp8 weights: mxfp8 activations in both stages, whatever the act
    # How the stages' mxfp4 or mxfp8 rounding scales each group (a call never mixes the two).
    mx_scale: quant.MxScale


@dataclass(frozen=True, slots=True)
class _Pairs:
    """The (token, slot) pairs of one call, flattened to P = M * K rows in token-major order."""

    weights: torch.Tensor  # [P, 1] fp32 router weight
    token: torch.Tensor  # [P] row of the activations
    expert: torch.Tensor  # [P] local expert, clamped into [0, L)
    valid: torch.Tensor  # [P, 1] bool: the pair computes
    flat_valid: torch.Tensor  # [P] the same

    @staticmethod
    def of(
        problem: _Problem,
        topk_weight: torch.Tensor,
        local: torch.Tensor,
        pair_valid: torch.Tensor,
        device: torch.device,
    ) -> _Pairs:
        tokens = torch.arange(problem.tokens, device=device)
        return _Pairs(
            weights=topk_weight.float().reshape(-1, 1),
            token=_per_pair(tokens, problem.top_k),
            expert=local.reshape(-1),
            valid=pair_valid.reshape(-1, 1),
            flat_valid=pair_valid.reshape(-1),
        )


class _StageWeights(NamedTuple):
    """One stage's expert weights as the call passes them: w1, w1_scale, bias1 or w2, w2_scale,
    bias2."""

    weight: torch.Tensor
    scale: torch.Tensor | None
    bias: torch.Tensor | None


def _logical_width(t: torch.Tensor) -> int:
    """Last-dim size in elements: fp4x2 packs two elements per byte."""
    return int(t.shape[-1]) * (2 if t.dtype == quant.FP4X2 else 1)


class ReferenceFusedMoe:
    """Callable with AITER's `fused_moe` keyword signature; see the module docstring."""

    def __init__(
        self, *, graph_safe: bool = False, rounding: Mxfp4ActivationRule = NEWEST
    ) -> None:
        self.graph_safe = graph_safe
        # The AITER release whose per_1x32 activation rounding to follow (kernels.rounding).
        self.rounding = rounding

    def __repr__(self) -> str:
        return (
            f"ReferenceFusedMoe(graph_safe={self.graph_safe}, "
            f"rounding={self.rounding.release}/{self.rounding.arch})"
        )

    def __call__(
        self,
        hidden_states: torch.Tensor,
        w1: torch.Tensor,
        w2: torch.Tensor,
        topk_weight: torch.Tensor,
        topk_ids: torch.Tensor,
        expert_mask: torch.Tensor | None = None,
        activation: ActivationType | int = ActivationType.Silu,
        quant_type: QuantType | int = QuantType.No,
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
        *,
        swiglu_limit: float = 0.0,
        gate_mode: GateMode | str = GateMode.SEPARATED,
        beta: float | None = None,
        linear_beta: float | None = None,
        output: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Compute the MoE layer output `[M, w2.shape[1]]` in `dtype or hidden_states.dtype`.

        With `output` (AITER's newer keyword, keywords.ADDED_IN) the result is written into that
        tensor, which must have the output's shape and dtype (a strided view is fine), and the
        same tensor is returned.

        `block_size_M`, `moe_sorting_dispatch_policy`, `hidden_pad` and `intermediate_pad` are
        tuning hints for AITER's kernels (the weights are stored padded with zeros); they do not
        change the result and are ignored here. `gate_mode` is AITER's (v0.1.14 onwards): the
        enum member or its string value, as SGLang passes it (`GateMode.INTERLEAVE.value`).
        `beta` and `linear_beta` are Situv2's (v0.1.19 onwards; None means 1.0, as AITER reads it).
        """
        problem = _check_call(
            hidden_states, w1, w2, topk_weight, topk_ids, expert_mask, activation, quant_type,
            w1_scale, w2_scale, a1_scale, a2_scale, num_local_tokens, dtype, bias1, bias2,
            swiglu_limit, gate_mode, self.rounding,
        )
        if not self.graph_safe:
            _check_values(problem, topk_ids, expert_mask, num_local_tokens)
        row_valid = _row_valid(problem, num_local_tokens, hidden_states.device)
        local, pair_valid = _route(problem, topk_ids, expert_mask, row_valid)
        x = _stage1_input(problem, hidden_states, a1_scale, row_valid)
        pairs = _Pairs.of(problem, topk_weight, local, pair_valid, hidden_states.device)
        stage1 = _StageWeights(w1, w1_scale, bias1)
        limits = _activation_limits(swiglu_limit, beta, linear_beta)
        a = self._stage1(problem, pairs, x, stage1, doweight_stage1, limits)
        # Rounding point 2: the stage-2 kernel reads it quantized per quant type.
        a = _stage2_input(problem, a, a2_scale)
        out = self._stage2(problem, pairs, a, _StageWeights(w2, w2_scale, bias2), doweight_stage1)
        return out if output is None else _written_into(output, out)

    def _stage1(
        self,
        problem: _Problem,
        pairs: _Pairs,
        x: torch.Tensor,
        stage: _StageWeights,
        doweight_stage1: bool,
        limits: tuple[float, float, float],
    ) -> torch.Tensor:
        """h = x @ W1[e].T per pair, then weighting, bias, activation; fp32 [P, I] rounded once.
        `limits`: the Swiglu/Situv2 clamp, then Situv2's beta and linear_beta."""
        h = self._expert_gemm(
            problem, x, pairs.token, pairs.expert, pairs.flat_valid, stage, rows_are_tokens=True
        )
        if doweight_stage1:
            h = h * pairs.weights
        if stage.bias is not None:
            h = h + stage.bias.float()[pairs.expert]
        a = _activate(problem, h, limits)
        # Pairs that are not computed must not move a per-tensor amax: zero them.
        a = torch.where(pairs.valid, a, torch.zeros_like(a))
        # Rounding point 1: the stage-1 kernel writes its output in the output dtype.
        return a.to(problem.out_dtype).float()

    def _stage2(
        self,
        problem: _Problem,
        pairs: _Pairs,
        a: torch.Tensor,
        stage: _StageWeights,
        doweight_stage1: bool,
    ) -> torch.Tensor:
        """y = a @ W2[e].T per pair, bias, weighting; pairs summed per token in fp32, cast once."""
        y = self._expert_gemm(
            problem, a, torch.arange(a.shape[0], device=a.device), pairs.expert,
            pairs.flat_valid, stage, rows_are_tokens=False,
        )
        if stage.bias is not None:
            y = y + stage.bias.float()[pairs.expert]
        if not doweight_stage1:
            y = y * pairs.weights
        y = torch.where(pairs.valid, y, torch.zeros_like(y))
        out = y.reshape(problem.tokens, problem.top_k, problem.hidden).sum(dim=1)
        return out.to(problem.out_dtype)

    def _expert_gemm(
        self,
        problem: _Problem,
        rows: torch.Tensor,
        row_of_pair: torch.Tensor,
        expert_of_pair: torch.Tensor,
        pair_valid: torch.Tensor,
        stage: _StageWeights,
        *,
        rows_are_tokens: bool,
    ) -> torch.Tensor:
        """`rows[row_of_pair[p]] @ W[expert_of_pair[p]].T` for every valid pair p, fp32 [P, N]
        (W the stage's weight, dequantized by its scale).

        Invalid pairs are 0. Default mode gathers each expert's pairs (data-dependent shapes);
        graph-safe mode multiplies every row by every expert and selects per pair.
        """
        pairs = row_of_pair.shape[0]
        n_out = int(stage.weight.shape[1])
        out = torch.zeros(pairs, n_out, dtype=torch.float32, device=rows.device)
        for e in range(problem.experts):
            w = _dequantize_expert(problem, stage.weight, stage.scale, e)
            if self.graph_safe:
                per_pair = rows @ w.T
                if rows_are_tokens:
                    # The K pairs of a token share its row.
                    per_pair = _per_pair(per_pair, problem.top_k)
                routed = (pair_valid & (expert_of_pair == e)).unsqueeze(-1)
                out = torch.where(routed, per_pair, out)
            else:
                index = torch.nonzero(pair_valid & (expert_of_pair == e)).squeeze(-1)
                out[index] = rows[row_of_pair[index]] @ w.T
        return out


def _written_into(output: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`out` copied into `output=`, which must take it as it is: same shape, dtype and device."""
    if output.shape != out.shape or output.dtype != out.dtype or output.device != out.device:
        raise ValueError(
            f"output must be {list(out.shape)} {_dtype_name(out.dtype)} on {out.device}, got "
            f"{list(output.shape)} {_dtype_name(output.dtype)} on {output.device}"
        )
    return output.copy_(out)


def _check_call(
    hidden_states: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    topk_weight: torch.Tensor,
    topk_ids: torch.Tensor,
    expert_mask: torch.Tensor | None,
    activation: ActivationType | int,
    quant_type: QuantType | int,
    w1_scale: torch.Tensor | None,
    w2_scale: torch.Tensor | None,
    a1_scale: torch.Tensor | None,
    a2_scale: torch.Tensor | None,
    num_local_tokens: torch.Tensor | None,
    dtype: torch.dtype | None,
    bias1: torch.Tensor | None,
    bias2: torch.Tensor | None,
    swiglu_limit: float,
    gate_mode: GateMode | str,
    rounding: Mxfp4ActivationRule,
) -> _Problem:
    """Every check that needs only shapes and dtypes (no host sync); returns the call's sizes.

    The checks run in a fixed order (switches, routing, weights, dtypes, optional tensors, scales):
    the first problem found is the one raised.
    """
    act, qt, mode = _check_switches(activation, quant_type, swiglu_limit, gate_mode)
    tokens, top_k = _check_routing(hidden_states, topk_weight, topk_ids)
    experts, hidden, inter, g1u1 = _check_weights(w1, w2, act, mode)
    out_dtype = _output_dtype(hidden_states, dtype)
    prequantized = _check_hidden_states(hidden_states, hidden, w2)
    per_1x32 = qt == QuantType.per_1x32
    if act == ActivationType.Situv2 and not (per_1x32 and w1.dtype == quant.FP4X2):
        raise ValueError(
            "Situv2 runs on AITER's a16w4 kernels only: it needs per_1x32 and fp4 weights"
        )
    # AITER (v0.1.16.post1 onwards) quantizes both stages' activations to mxfp8, with its RoundUp
    # scale, for fp8 per_1x32 weights, whatever the activation (fused_moe.py v0.1.20.post1:728-730,
    # 3028-3039); for fp4 weights the release's rule decides the roundings by activation, gate
    # mode and M, and their scale (kernels.rounding). Stage 2 rounds wherever stage 1 does, so
    # its rounding names the call's scale; a call that rounds to neither never reads it.
    mxfp8 = per_1x32 and w1.dtype in quant.FP8_DTYPES
    stage1, stage2 = (
        (Rounding.MXFP8, Rounding.MXFP8)
        if mxfp8
        else rounding.stages(act, mode, tokens) if per_1x32 else (None, None)
    )
    scaled = not mxfp8 and stage2 in (Rounding.MXFP4, Rounding.MXFP8)
    mx_scale = rounding.scale(stage2) if scaled and stage2 else quant.MxScale.ROUND_UP
    problem = _Problem(tokens, top_k, hidden, inter, experts, g1u1, out_dtype, act, qt,
                       prequantized, stage1, stage2, mode == GateMode.INTERLEAVE, mxfp8,
                       mx_scale)  # fmt: skip
    _check_mask_and_rows(problem, expert_mask, num_local_tokens)
    _check_biases(problem, w1, bias1, bias2)
    _check_weight_quant(problem, "w1", w1, w1_scale)
    _check_weight_quant(problem, "w2", w2, w2_scale)
    _check_activation_quant(problem, hidden_states, a1_scale, a2_scale)
    return problem


def _check_switches(
    activation: ActivationType | int,
    quant_type: QuantType | int,
    swiglu_limit: float,
    gate_mode: GateMode | str,
) -> tuple[ActivationType, QuantType, GateMode]:
    """The enum-valued arguments, parsed from their ints or strings."""
    try:
        act = ActivationType(int(activation))
    except ValueError:
        raise ValueError(
            "activation must be one of ActivationType.Silu/Gelu/Swiglu/Situv2 (0/1/2/3), got "
            f"{activation!r}"
        ) from None
    if act == ActivationType.No:
        raise ValueError("activation ActivationType.No is not supported: use Silu, Gelu or Swiglu")
    try:
        qt = QuantType(int(quant_type))
    except ValueError:
        valid = ", ".join(f"{m.name}={m.value}" for m in QuantType)
        raise ValueError(f"quant_type must be a QuantType ({valid}), got {quant_type!r}") from None
    if swiglu_limit < 0:
        raise ValueError(f"swiglu_limit must be >= 0 (0 means 7), got {swiglu_limit!r}")
    try:
        mode = GateMode(gate_mode)
    except ValueError:
        valid = ", ".join(repr(m.value) for m in GateMode)
        raise ValueError(f"gate_mode must be one of {valid}, got {gate_mode!r}") from None
    return act, qt, mode


def _check_routing(
    hidden_states: torch.Tensor, topk_weight: torch.Tensor, topk_ids: torch.Tensor
) -> tuple[int, int]:
    """The routing tensors against each other and the activations; returns (M, K)."""
    if topk_ids.dtype != torch.int32:
        raise TypeError(f"topk_ids must be int32, got {_dtype_name(topk_ids.dtype)}")
    if topk_weight.dtype != torch.float32:
        raise TypeError(f"topk_weight must be float32, got {_dtype_name(topk_weight.dtype)}")
    if topk_ids.dim() != 2:
        raise ValueError(f"topk_ids must be 2-D [M, topk], got shape {tuple(topk_ids.shape)}")
    if topk_weight.shape != topk_ids.shape:
        raise ValueError(
            f"topk_weight shape {tuple(topk_weight.shape)} must equal topk_ids shape "
            f"{tuple(topk_ids.shape)}"
        )
    if hidden_states.dim() != 2:
        raise ValueError(
            f"hidden_states must be 2-D [M, hidden], got shape {tuple(hidden_states.shape)}"
        )
    tokens, top_k = int(topk_ids.shape[0]), int(topk_ids.shape[1])
    if hidden_states.shape[0] != tokens:
        raise ValueError(
            f"hidden_states has {hidden_states.shape[0]} rows but topk_ids has {tokens}: "
            "they must have the same M"
        )
    if tokens == 0:
        raise ValueError("M == 0: fused_moe rejects an empty batch (callers skip the call)")
    return tokens, top_k


def _check_weights(
    w1: torch.Tensor, w2: torch.Tensor, act: ActivationType, mode: GateMode
) -> tuple[int, int, int, bool]:
    """The weights' shapes against each other; returns (L, H, I, g1u1)."""
    if w1.dim() != 3 or w2.dim() != 3:
        raise ValueError(
            f"w1 and w2 must be 3-D [experts, rows, cols], got {tuple(w1.shape)} and "
            f"{tuple(w2.shape)}"
        )
    experts, hidden, inter = int(w2.shape[0]), int(w2.shape[1]), _logical_width(w2)
    if w1.shape[0] != experts:
        raise ValueError(f"w1 has {w1.shape[0]} experts but w2 has {experts}")
    if experts == 0:
        raise ValueError("w1 and w2 hold no experts (L == 0)")
    if w1.shape[1] not in (inter, 2 * inter):
        raise ValueError(
            f"w1 must have I ({inter}) or 2*I ({2 * inter}) rows (I from w2 {tuple(w2.shape)}), "
            f"got {tuple(w1.shape)}"
        )
    if _logical_width(w1) != hidden:
        raise ValueError(
            f"w1 has {_logical_width(w1)} input columns but w2 has {hidden} output rows "
            f"(w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)})"
        )
    g1u1 = w1.shape[1] == 2 * inter
    if act in (ActivationType.Swiglu, ActivationType.Situv2) and not g1u1:
        raise ValueError(f"{act.name} needs gate and up rows (w1 [L, 2I, H]); got w1 [L, I, H]")
    if mode == GateMode.INTERLEAVE and not g1u1:
        raise ValueError(
            "gate_mode 'interleave' needs gate and up rows (w1 [L, 2I, H]); got w1 [L, I, H]"
        )
    return experts, hidden, inter, g1u1


def _output_dtype(hidden_states: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """`dtype`, else the activations' own float dtype, else bf16; only bf16 and fp16 are kept."""
    if dtype is not None:
        out_dtype = dtype
    elif hidden_states.dtype in _OUT_DTYPES:
        out_dtype = hidden_states.dtype
    else:
        out_dtype = torch.bfloat16
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"output dtype must be bfloat16 or float16, got {_dtype_name(out_dtype)}")
    return out_dtype


def _check_hidden_states(hidden_states: torch.Tensor, hidden: int, w2: torch.Tensor) -> bool:
    """Activations: already quantized, or bf16/fp16 that the kernel quantizes per quant type.

    Returns whether they arrive quantized.
    """
    prequantized = hidden_states.dtype in (*quant.FP8_DTYPES, quant.FP4X2)
    if not prequantized and hidden_states.dtype not in _FLOAT_INPUT_DTYPES:
        raise TypeError(
            "hidden_states must be bfloat16, float16, float8_e4m3fn(uz) or float4_e2m1fn_x2, got "
            f"{_dtype_name(hidden_states.dtype)}"
        )
    if _logical_width(hidden_states) != hidden:
        raise ValueError(
            f"hidden_states has {_logical_width(hidden_states)} columns but the weights expect "
            f"H = {hidden} (w2 {tuple(w2.shape)})"
        )
    return prequantized


def _check_mask_and_rows(
    problem: _Problem, expert_mask: torch.Tensor | None, num_local_tokens: torch.Tensor | None
) -> None:
    """The optional routing tensors' dtypes and shapes (their values need a host sync)."""
    if expert_mask is not None:
        if expert_mask.dtype != torch.int32:
            raise TypeError(f"expert_mask must be int32, got {_dtype_name(expert_mask.dtype)}")
        if expert_mask.dim() != 1:
            raise ValueError(
                f"expert_mask must be 1-D over every id, got shape {tuple(expert_mask.shape)}"
            )
        if expert_mask.numel() < problem.experts:
            raise ValueError(
                f"expert_mask has {expert_mask.numel()} entries, fewer than the {problem.experts} "
                "local experts it must select"
            )
    if num_local_tokens is not None and (
        num_local_tokens.dtype != torch.int32 or num_local_tokens.numel() != 1
    ):
        raise TypeError(
            "num_local_tokens must be an int32 tensor of one element, got "
            f"{_dtype_name(num_local_tokens.dtype)} of shape {tuple(num_local_tokens.shape)}"
        )


def _check_biases(
    problem: _Problem, w1: torch.Tensor, bias1: torch.Tensor | None, bias2: torch.Tensor | None
) -> None:
    experts, n_gate_up = problem.experts, int(w1.shape[1])
    if bias1 is not None and tuple(bias1.shape) != (experts, n_gate_up):
        raise ValueError(f"bias1 must be [{experts}, {n_gate_up}], got {tuple(bias1.shape)}")
    if bias2 is not None and tuple(bias2.shape) != (experts, problem.hidden):
        raise ValueError(f"bias2 must be [{experts}, {problem.hidden}], got {tuple(bias2.shape)}")


def _check_weight_quant(
    problem: _Problem, name: str, w: torch.Tensor, scale: torch.Tensor | None
) -> None:
    qt = problem.quant_type
    rows, cols = int(w.shape[1]), _logical_width(w)
    shape = tuple(scale.shape) if scale is not None else None
    if w.dtype == quant.FP4X2 and (qt != QuantType.per_1x32 or scale is None):
        raise ValueError(
            f"{name} is float4_e2m1fn_x2: it needs QuantType.per_1x32 and e8m0 {name}_scale "
            f"[L, N, K/32]; got {qt.name} with {name}_scale {shape}"
        )
    if scale is None and qt == QuantType.per_1x32 and w.dtype in quant.FP8_DTYPES:
        raise ValueError(
            f"{name} is fp8 with QuantType.per_1x32 (mxfp8): it needs e8m0 {name}_scale "
            "[L, N, K/32]"
        )
    if scale is None:
        # Weights used as they are: bf16 weights may meet a quantized wire (MORI).
        return
    want: tuple[int, ...]
    if qt == QuantType.No:
        raise ValueError(f"{name}_scale was given but quant_type is No (unquantized weights)")
    if qt == QuantType.per_Tensor:
        if scale.numel() != problem.experts:
            raise ValueError(
                f"{name}_scale for per_Tensor must hold one scale per expert ([L, 1] = "
                f"[{problem.experts}, 1]), got {shape}"
            )
        return
    if qt == QuantType.per_Token:
        want = (problem.experts, rows, 1)
    elif qt in (QuantType.per_1x128, QuantType.per_128x128):
        if rows % quant.FP8_GROUP or cols % quant.FP8_GROUP:
            raise ValueError(
                f"{name} {tuple(w.shape)} must have rows and columns that are multiples of 128 for "
                f"{qt.name} block scales"
            )
        want = (problem.experts, rows // quant.FP8_GROUP, cols // quant.FP8_GROUP)
    else:
        if w.dtype not in (quant.FP4X2, *quant.FP8_DTYPES):
            raise ValueError(
                f"{name}_scale for per_1x32 needs float4_e2m1fn_x2 (mxfp4) or float8_e4m3fn(uz) "
                f"(mxfp8) weights, got {_dtype_name(w.dtype)}"
            )
        if scale.dtype not in (quant.E8M0, torch.uint8):
            raise TypeError(
                f"{name}_scale for per_1x32 must be float8_e8m0fnu (or its uint8 bits), got "
                f"{_dtype_name(scale.dtype)}"
            )
        want = (problem.experts, rows, cols // quant.MXFP4_GROUP)
    if shape != want:
        raise ValueError(
            f"{name}_scale for {qt.name} must be {list(want)}, got {list(shape or ())}"
        )


def _check_activation_quant(
    problem: _Problem,
    hidden_states: torch.Tensor,
    a1_scale: torch.Tensor | None,
    a2_scale: torch.Tensor | None,
) -> None:
    qt, h, i = problem.quant_type, problem.hidden, problem.inter
    static_ok = "a static scale is only accepted for per_Tensor or pre-quantized hidden_states"
    if a2_scale is not None and (qt != QuantType.per_Tensor or a2_scale.numel() != 1):
        raise ValueError(
            f"a2_scale must be a [1] per_Tensor scale; got {tuple(a2_scale.shape)} with "
            f"{qt.name} (AITER's per-token and per-group quantizers refuse a static scale)"
        )
    if problem.prequantized:
        _check_prequantized(problem, hidden_states, a1_scale)
    elif a1_scale is not None and (qt != QuantType.per_Tensor or a1_scale.numel() != 1):
        raise ValueError(
            f"a1_scale {tuple(a1_scale.shape)} given with {_dtype_name(hidden_states.dtype)} "
            f"hidden_states and {qt.name}: {static_ok} (AITER's per-token and per-group "
            "quantizers refuse a static scale)"
        )
    group = {
        QuantType.per_1x128: quant.FP8_GROUP,
        QuantType.per_128x128: quant.FP8_GROUP,
        QuantType.per_1x32: quant.MXFP4_GROUP,
    }.get(qt)
    if group is not None and (problem.stage1, problem.stage2) != (Rounding.BF16, Rounding.BF16):
        for name, size in (("hidden size H", h), ("intermediate size I", i)):
            if size % group:
                raise ValueError(
                    f"{qt.name} quantizes activations in groups of {group}: {name} = {size} is "
                    "not a multiple"
                )


def _check_prequantized(
    problem: _Problem, hidden_states: torch.Tensor, a1_scale: torch.Tensor | None
) -> None:
    """fp8 or fp4 hidden_states: the quant type that reads them, and the a1_scale they need."""
    qt, m, h = problem.quant_type, problem.tokens, problem.hidden
    is_fp4 = hidden_states.dtype == quant.FP4X2
    if problem.mxfp8:
        # fp8 (mxfp8) weights compute on mxfp8 rows, but AITER quantizes that path's input itself,
        # from bf16/fp16 hidden_states, and ignores a1_scale (aiter/fused_moe.py
        # e4048607a5:3074-3099): no pre-quantized input fits them, not even mxfp8 rows.
        raise ValueError(
            f"hidden_states of dtype {_dtype_name(hidden_states.dtype)} do not fit quant_type "
            "per_1x32 with fp8 (mxfp8) weights: AITER quantizes their input to mxfp8 itself, from "
            "bf16/fp16 hidden_states, and does not read a1_scale"
        )
    if is_fp4 != (qt == QuantType.per_1x32) or qt == QuantType.No:
        raise ValueError(
            f"hidden_states of dtype {_dtype_name(hidden_states.dtype)} do not fit quant_type "
            f"{qt.name}: fp8 input goes with per_Tensor/per_Token/per_1x128/per_128x128, "
            "float4_e2m1fn_x2 input with per_1x32 on fp4 weights"
        )
    if a1_scale is None:
        raise ValueError(
            "a1_scale must be provided for pre-quantized hidden_states "
            f"({_dtype_name(hidden_states.dtype)})"
        )
    want = {
        QuantType.per_Tensor: (1,),
        QuantType.per_Token: (m, 1),
        QuantType.per_1x128: (m, h // quant.FP8_GROUP),
        QuantType.per_128x128: (m, h // quant.FP8_GROUP),
        QuantType.per_1x32: (m, h // quant.MXFP4_GROUP),
    }[qt]
    if tuple(a1_scale.shape) != want:
        raise ValueError(
            f"a1_scale for pre-quantized {qt.name} input must be {list(want)}, got "
            f"{list(a1_scale.shape)}"
        )
    if qt == QuantType.per_1x32 and a1_scale.dtype not in (quant.E8M0, torch.uint8):
        raise TypeError(
            f"a1_scale for {_dtype_name(hidden_states.dtype)} per_1x32 input must be "
            f"float8_e8m0fnu, got {_dtype_name(a1_scale.dtype)}"
        )


def _activation_limits(
    swiglu_limit: float, beta: float | None, linear_beta: float | None
) -> tuple[float, float, float]:
    """The Swiglu clamp (AITER's default where none is set) and Situv2's beta and linear_beta
    (None reads as 1.0, as AITER reads it)."""
    limit = swiglu_limit if swiglu_limit > 0 else _DEFAULT_SWIGLU_LIMIT
    return (
        limit,
        1.0 if beta is None else float(beta),
        1.0 if linear_beta is None else float(linear_beta),
    )


def _check_values(
    problem: _Problem,
    topk_ids: torch.Tensor,
    expert_mask: torch.Tensor | None,
    num_local_tokens: torch.Tensor | None,
) -> None:
    """Checks that read device data (default mode only: each one is a host sync)."""
    rows = problem.tokens
    if num_local_tokens is not None:
        rows = int(num_local_tokens.reshape(()).item())
        if not 0 <= rows <= problem.tokens:
            raise ValueError(
                f"num_local_tokens = {rows} must be in [0, M = {problem.tokens}]"
            )
    if expert_mask is not None:
        if bool(((expert_mask != 0) & (expert_mask != 1)).any()):
            raise ValueError("expert_mask must hold only 0 and 1")
        total = int(expert_mask.sum().item())
        if total != problem.experts:
            raise ValueError(
                f"expert_mask selects {total} experts but the weights hold L = {problem.experts}: "
                "mask.sum() must equal L"
            )
    ids = topk_ids[:rows]
    if ids.numel() == 0:
        return
    low, high = int(ids.min().item()), int(ids.max().item())
    if low < 0:
        raise ValueError(
            f"topk_ids contains negative ids (min {low}): AITER indexes memory with the raw id; "
            "reroute them to a sink id whose expert_mask entry is 0"
        )
    bound, what = (
        (expert_mask.numel(), "expert_mask.numel()")
        if expert_mask is not None
        else (problem.experts, "the number of local experts L (no expert_mask)")
    )
    if high >= bound:
        raise ValueError(
            f"topk_ids contains id {high}, out of range: ids must be < {what} = {bound}"
        )


def _row_valid(
    problem: _Problem, num_local_tokens: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """[M] bool: rows below `num_local_tokens` (all rows without it). No host sync."""
    rows = torch.arange(problem.tokens, device=device)
    if num_local_tokens is None:
        return torch.ones(problem.tokens, dtype=torch.bool, device=device)
    return rows < num_local_tokens.reshape(1).to(rows.dtype)


def _route(
    problem: _Problem,
    topk_ids: torch.Tensor,
    expert_mask: torch.Tensor | None,
    row_valid: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local expert per pair ([M, K] int64, clamped into [0, L)) and whether the pair computes."""
    ids = topk_ids.long()
    if expert_mask is None:
        in_range = (ids >= 0) & (ids < problem.experts)
        local = ids
    else:
        bound = expert_mask.numel()
        in_range = (ids >= 0) & (ids < bound)
        safe = ids.clamp(0, bound - 1)
        # Local index of id g is the count of selected ids before it; ids not selected are
        # dropped. Only an entry of exactly 1 selects: graph-safe mode cannot refuse a mask
        # holding 2 or -1, and counting those entries would shift later experts onto the wrong
        # weights (default mode refuses such a mask before routing).
        selected = (expert_mask == 1).long()
        local = (torch.cumsum(selected, dim=0) - 1)[safe]
        in_range = in_range & (selected[safe] == 1)
    valid = in_range & (local >= 0) & (local < problem.experts) & row_valid.unsqueeze(-1)
    return local.clamp(0, problem.experts - 1), valid


def _dequantize_expert(
    problem: _Problem, w: torch.Tensor, scale: torch.Tensor | None, e: int
) -> torch.Tensor:
    """Expert e's weight matrix [N, K] in fp32, as the kernel sees it."""
    if scale is None:
        return w[e].float()
    qt = problem.quant_type
    if qt == QuantType.per_Tensor:
        return w[e].float() * scale.reshape(-1)[e].float()
    if qt == QuantType.per_Token:
        return w[e].float() * scale[e].float()
    if qt in (QuantType.per_1x128, QuantType.per_128x128):
        return quant.dequantize_fp8_128x128(w[e], scale[e])
    if problem.mxfp8:
        return quant.dequantize_mxfp8(w[e], scale[e].view(quant.E8M0))
    return quant.dequantize_mxfp4(w[e], scale[e].view(quant.E8M0))


def _stage1_input(
    problem: _Problem,
    hidden_states: torch.Tensor,
    a1_scale: torch.Tensor | None,
    row_valid: torch.Tensor,
) -> torch.Tensor:
    """The activations stage 1 multiplies, fp32 [M, H]: dequantized input or quantize-dequantize.

    Rows at or beyond `num_local_tokens` are zeroed first (they may hold stale data, even NaN) so
    that they move no per-tensor amax.
    """
    qt = problem.quant_type
    valid = row_valid.unsqueeze(-1)
    if problem.prequantized:
        if qt == QuantType.per_1x32:
            x = quant.dequantize_mxfp4(hidden_states, _required(a1_scale).view(quant.E8M0))
        elif qt in (QuantType.per_1x128, QuantType.per_128x128):
            x = quant.dequantize_fp8_1x128(hidden_states, _required(a1_scale))
        else:
            x = hidden_states.float() * _required(a1_scale).float()
        return torch.where(valid, x, torch.zeros_like(x))
    x = hidden_states.float()
    x = torch.where(valid, x, torch.zeros_like(x))
    if qt == QuantType.No or problem.stage1 is Rounding.BF16:
        return x
    return _quantize_dequantize(problem, x, a1_scale, problem.stage1)


def _stage2_input(
    problem: _Problem, a: torch.Tensor, a2_scale: torch.Tensor | None
) -> torch.Tensor:
    """Rounding point 2: what stage 2 reads of the (already output-dtype) activations [P, I]."""
    if problem.quant_type == QuantType.No or problem.stage2 is Rounding.BF16:
        return a
    return _quantize_dequantize(problem, a, a2_scale, problem.stage2)


def _quantize_dequantize(
    problem: _Problem,
    x: torch.Tensor,
    static_scale: torch.Tensor | None,
    rounding: Rounding | None,
) -> torch.Tensor:
    """Dynamic (or per_Tensor static) activation quantization, back to fp32. Rows independent
    except per_Tensor, whose amax spans the whole (already masked) tensor. per_1x32 rounds to
    mxfp4 or mxfp8 as `rounding` says."""
    qt = problem.quant_type
    if qt == QuantType.per_Tensor:
        if static_scale is not None:
            scale = static_scale.float().reshape(1)
            q = quant.quantize_fp8_static(x, scale, _ACTIVATION_FP8)
        else:
            q, scale = quant.quantize_fp8_per_tensor(x, _ACTIVATION_FP8)
        return quant.dequantize_fp8_per_tensor(q, scale)
    if qt == QuantType.per_Token:
        q, scale = quant.quantize_fp8_per_row(x, _ACTIVATION_FP8)
        return quant.dequantize_fp8_per_row(q, scale)
    if qt in (QuantType.per_1x128, QuantType.per_128x128):
        q, scale = quant.quantize_fp8_1x128(x, _ACTIVATION_FP8)
        return quant.dequantize_fp8_1x128(q, scale)
    if rounding is Rounding.MXFP8:
        q, e8m0 = quant.quantize_mxfp8(x, _ACTIVATION_FP8, problem.mx_scale)
        return quant.dequantize_mxfp8(q, e8m0)
    packed, e8m0 = quant.quantize_mxfp4(x, problem.mx_scale)
    return quant.dequantize_mxfp4(packed, e8m0)


def _activate(
    problem: _Problem, h: torch.Tensor, limits: tuple[float, float, float]
) -> torch.Tensor:
    """g1u1: act(gate) * up (Swiglu and Situv2 have their own gate/up forms); g1u0: act(h)."""
    limit, beta, linear_beta = limits
    act = problem.activation
    if problem.g1u1:
        if problem.interleaved:
            gate, up = h[:, 0::2], h[:, 1::2]
        else:
            gate, up = h[:, : problem.inter], h[:, problem.inter :]
        if act == ActivationType.Swiglu:
            gate = gate.clamp(max=limit)
            up = up.clamp(-limit, limit)
            return gate * torch.sigmoid(_SWIGLU_ALPHA * gate) * (up + 1)
        if act == ActivationType.Situv2:
            # AITER's mixed_moe_gemm_2stage.py (v0.1.19) situ_mul_vec4: the Swiglu clamps, then
            # beta * tanh(g / beta) * sigmoid(g) * linear_beta * tanh(u / linear_beta).
            gate = gate.clamp(max=limit)
            up = up.clamp(-limit, limit)
            situ = beta * torch.tanh(gate / beta) * torch.sigmoid(gate)
            return situ * (linear_beta * torch.tanh(up / linear_beta))
        return _gate_activation(act, gate) * up
    return _gate_activation(act, h)


def _gate_activation(act: ActivationType, x: torch.Tensor) -> torch.Tensor:
    if act == ActivationType.Silu:
        return F.silu(x)
    return F.gelu(x, approximate="none")


def _per_pair(t: torch.Tensor, top_k: int) -> torch.Tensor:
    """Repeat each row of `t` top_k times (row t -> pairs t*K .. t*K+K-1) without a host sync."""
    return t.unsqueeze(1).expand(t.shape[0], top_k, *t.shape[1:]).reshape(-1, *t.shape[1:])


def _required(t: torch.Tensor | None) -> torch.Tensor:
    # Presence was checked in _check_call; this narrows the type.
    if t is None:
        raise ValueError("a required scale is missing")
    return t


fused_moe = ReferenceFusedMoe()
fused_moe_graph_safe = ReferenceFusedMoe(graph_safe=True)

"""Random expert weights in the logical layouts of every quant method, for tests and benchmarks.

Layouts (L experts, H = hidden_size + hidden_pad, I = intermediate_size + intermediate_pad):
- `unquant`: bf16 `w13 [L, 2I, H]` (gate rows then up rows), `w2 [L, H, I]`
- `fp8_block`: fp8 weights, fp32 `w13_scale [L, 2I/128, H/128]`, `w2_scale [L, H/128, I/128]`
- `fp8_channel`: fp8 weights, fp32 `w13_scale [L, 2I, 1]`, `w2_scale [L, H, 1]`
- `fp8_tensor`: fp8 weights, fp32 `w13_scale [L, 1]`, `w2_scale [L, 1]` (one per expert weight)
- `ct_w8a8_fp8`: as `fp8_channel`, plus static fp32 `a13_scale`, `a2_scale` `[1]`
- `quark_w8a8_fp8`: as `ct_w8a8_fp8` (a checkpoint with dynamic input scales has none)
- `mxfp4`, `quark_w4a4_mxfp4`: `float4_e2m1fn_x2` `w13 [L, 2I, H/2]`, `w2 [L, H, I/2]`, e8m0
  `w13_scale [L, 2I, H/32]`, `w2_scale [L, H, I/32]`; `mxfp4` also fp32 `b13 [L, 2I]`, `b2 [L, H]`
- `quark_w4a8_mxfp4`: as `mxfp4`, plus static fp32 `a13_scale`, `a2_scale` `[1]`
- `mxfp8`: fp8 `w13 [L, 2I, H]`, `w2 [L, H, I]`, e8m0 `w13_scale [L, 2I, H/32]`,
  `w2_scale [L, H, I/32]`
- `quark_int4fp8`: int8 holding int4 values in [-7, 7], fp32 `w13_scale [L, 2I, 1]`,
  `w2_scale [L, H, 1]`

`gate_mode=GateMode.INTERLEAVE` interleaves the gate and up rows of `w13` (and of its per-row or
per-32 scales and `b13`) as gpt-oss checkpoints store them: row `2i` gate `i`, row `2i + 1` up `i`
(`moe_runtime.gate_up`); `fp8_block`'s 128x128 block scales have no interleaved form.

Padding: the trailing `hidden_pad` columns/rows and `intermediate_pad` rows/columns are zero (in the
gate and in the up half alike), biases too, so a padded layer computes what the unpadded one does.
Values are drawn with std `1/sqrt(fan_in)`, so unit-scale activations give O(1) outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from moe_runtime import gate_up, quant
from moe_runtime.enums import GateMode
from moe_runtime.types import ExpertWeights

QUANT_METHODS = (
    "unquant",
    "fp8_block",
    "fp8_channel",
    "fp8_tensor",
    "mxfp8",
    "mxfp4",
    "quark_w4a4_mxfp4",
    "quark_int4fp8",
    "ct_w8a8_fp8",
    "quark_w8a8_fp8",
    "quark_w4a8_mxfp4",
)
# Static input scales of ct_w8a8_fp8: fp8 e4m3fn covers |x| <= 8 at these, enough for unit-scale
# activations and the stage-1 outputs they give with these weights (larger values saturate).
_STATIC_INPUT_SCALE = 8.0 / quant.fp8_max(quant.FP8)
_BIAS_STD = 0.1
# ExpertWeights' tensor fields, and those with a leading expert dimension (all but the static
# input scales, one per layer).
_TENSORS = tuple(f.name for f in dataclasses.fields(ExpertWeights) if "Tensor" in str(f.type))
_PER_EXPERT = tuple(name for name in _TENSORS if name not in ("a13_scale", "a2_scale"))


def _quantize_fp8_per_expert(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8 `[L, N, K]` with one dynamic scale per expert: (q, scale `[L, 1]` fp32)."""
    pairs = [quant.quantize_fp8_per_tensor(expert) for expert in w]
    return torch.stack([q for q, _ in pairs]), torch.stack([s for _, s in pairs])


def _dequantize_fp8_per_expert(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float().reshape(-1, 1, 1)


# How each quantized method stores a weight matrix, and how the kernel reads it back.
_QUANTIZERS: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "fp8_block": quant.quantize_fp8_128x128,
    "fp8_channel": quant.quantize_fp8_per_row,
    "fp8_tensor": _quantize_fp8_per_expert,
    "mxfp8": quant.quantize_mxfp8,
    "quark_w4a8_mxfp4": quant.quantize_mxfp4,
    "ct_w8a8_fp8": quant.quantize_fp8_per_row,
    "quark_w8a8_fp8": quant.quantize_fp8_per_row,
    "mxfp4": quant.quantize_mxfp4,
    "quark_w4a4_mxfp4": quant.quantize_mxfp4,
    "quark_int4fp8": quant.quantize_int4_per_row,
}
_DEQUANTIZERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "fp8_block": quant.dequantize_fp8_128x128,
    "fp8_channel": quant.dequantize_fp8_per_row,
    "fp8_tensor": _dequantize_fp8_per_expert,
    "mxfp8": quant.dequantize_mxfp8,
    "quark_w4a8_mxfp4": quant.dequantize_mxfp4,
    "ct_w8a8_fp8": quant.dequantize_fp8_per_row,
    "quark_w8a8_fp8": quant.dequantize_fp8_per_row,
    "mxfp4": quant.dequantize_mxfp4,
    "quark_w4a4_mxfp4": quant.dequantize_mxfp4,
    "quark_int4fp8": quant.dequantize_int4_per_row,
}


def _check_method(quant_method: str) -> None:
    if quant_method not in QUANT_METHODS:
        raise ValueError(
            f"unknown quant method {quant_method!r}; valid: {', '.join(QUANT_METHODS)}"
        )


@dataclasses.dataclass(frozen=True)
class _Sizes:
    """A layer's expert count, sizes and pads: `padded` is (H, I) of the module docstring."""

    num_experts: int
    hidden_size: int
    intermediate_size: int
    hidden_pad: int
    intermediate_pad: int

    @property
    def unpadded(self) -> tuple[int, int, int]:
        return self.num_experts, self.hidden_size, self.intermediate_size

    @property
    def padded(self) -> tuple[int, int]:
        return self.hidden_size + self.hidden_pad, self.intermediate_size + self.intermediate_pad


def _padded_dense(sizes: _Sizes, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 w13 [L, 2I, H] and w2 [L, H, I] over the padded sizes, zero in every padded slot."""
    num_experts, hidden_size, intermediate_size = sizes.unpadded
    h, i = sizes.padded
    w13 = torch.zeros(num_experts, 2 * i, h)
    w2 = torch.zeros(num_experts, h, i)
    shape13 = (num_experts, intermediate_size, hidden_size)
    gate = torch.randn(shape13, generator=generator) / hidden_size**0.5
    up = torch.randn(shape13, generator=generator) / hidden_size**0.5
    w13[:, :intermediate_size, :hidden_size] = gate
    w13[:, i : i + intermediate_size, :hidden_size] = up
    w2[:, :hidden_size, :intermediate_size] = (
        torch.randn(num_experts, hidden_size, intermediate_size, generator=generator)
        / intermediate_size**0.5
    )
    return w13, w2


def _padded_biases(sizes: _Sizes, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    num_experts, hidden_size, intermediate_size = sizes.unpadded
    h, i = sizes.padded
    b13 = torch.zeros(num_experts, 2 * i)
    b2 = torch.zeros(num_experts, h)
    b13[:, :intermediate_size] = torch.randn(num_experts, intermediate_size, generator=generator)
    b13[:, i : i + intermediate_size] = torch.randn(
        num_experts, intermediate_size, generator=generator
    )
    b2[:, :hidden_size] = torch.randn(num_experts, hidden_size, generator=generator)
    return b13 * _BIAS_STD, b2 * _BIAS_STD


def _check_sizes(quant_method: str, sizes: _Sizes) -> None:
    """A known method, positive sizes, non-negative pads, padded sizes its quant groups divide."""
    _check_method(quant_method)
    num_experts, hidden_size, intermediate_size = sizes.unpadded
    hidden_pad, intermediate_pad = sizes.hidden_pad, sizes.intermediate_pad
    sizes_ok = min(num_experts, hidden_size, intermediate_size) >= 1
    if not sizes_ok or min(hidden_pad, intermediate_pad) < 0:
        raise ValueError(
            "num_experts, hidden_size and intermediate_size must be >= 1 and pads >= 0, got "
            f"{num_experts}, {hidden_size}, {intermediate_size}, pads {hidden_pad}, "
            f"{intermediate_pad}"
        )
    h, i = sizes.padded
    group = weight_group(quant_method)
    bad = [f"{name} = {size}" for name, size in (("H", h), ("I", i)) if group and size % group]
    if bad:
        raise ValueError(
            f"{quant_method} needs padded sizes that are multiples of {group}: {', '.join(bad)}"
        )


# Columns one weight scale covers, for the methods whose scales are per group: fp8 blocks of
# 128, MX groups of 32.
_WEIGHT_GROUPS = {
    "fp8_block": quant.FP8_GROUP,
    "mxfp4": quant.MXFP4_GROUP,
    "quark_w4a4_mxfp4": quant.MXFP4_GROUP,
    "mxfp8": quant.MXFP4_GROUP,
    "quark_w4a8_mxfp4": quant.MXFP4_GROUP,
}


def weight_group(quant_method: str) -> int:
    """Columns one weight scale of `quant_method` covers, which the padded H and I must be
    multiples of (0: no such constraint)."""
    _check_method(quant_method)
    return _WEIGHT_GROUPS.get(quant_method, 0)


def _stored(quant_method: str, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One fp32 weight matrix as `quant_method` stores it, with its scales (bf16, none: unquant)."""
    if quant_method == "unquant":
        return weight.bfloat16(), None
    return _QUANTIZERS[quant_method](weight)


def make_expert_weights(
    quant_method: str,
    num_experts: int,
    hidden_size: int,
    intermediate_size: int,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    hidden_pad: int = 0,
    intermediate_pad: int = 0,
    gate_mode: GateMode = GateMode.SEPARATED,
) -> ExpertWeights:
    """Random weights of `num_experts` experts in `quant_method`'s logical layout (module doc).

    Deterministic for a given seed (drawn on the CPU, then moved to `device`); the same seed gives
    the same experts in either gate mode, only the rows of w13 are ordered differently.
    """
    sizes = _Sizes(num_experts, hidden_size, intermediate_size, hidden_pad, intermediate_pad)
    _check_sizes(quant_method, sizes)
    generator = torch.Generator().manual_seed(seed)
    w13, w2 = _padded_dense(sizes, generator)
    w13_weight, w13_scale = _stored(quant_method, w13)
    w2_weight, w2_scale = _stored(quant_method, w2)
    drawn = ExpertWeights(
        w13_weight,
        w2_weight,
        w13_scale,
        w2_scale,
        hidden_pad=hidden_pad,
        intermediate_pad=intermediate_pad,
    )
    if quant_method in ("mxfp4", "quark_w4a8_mxfp4"):
        b13, b2 = _padded_biases(sizes, generator)
        drawn = dataclasses.replace(drawn, b13=b13, b2=b2)
    if quant_method in ("ct_w8a8_fp8", "quark_w8a8_fp8", "quark_w4a8_mxfp4"):
        static = torch.tensor([_STATIC_INPUT_SCALE])
        drawn = dataclasses.replace(drawn, a13_scale=static, a2_scale=static.clone())
    separated = _mapped(drawn, _TENSORS, lambda t: t.to(device))
    if gate_mode == GateMode.INTERLEAVE:
        return gate_up.interleaved(separated)
    return separated


def _mapped(
    weights: ExpertWeights, names: tuple[str, ...], fn: Callable[[torch.Tensor], torch.Tensor]
) -> ExpertWeights:
    """`weights` with `fn` applied to each of its tensors named in `names` (None stays None)."""
    tensors: dict[str, torch.Tensor | None] = {name: getattr(weights, name) for name in names}
    mapped: dict[str, Any] = {name: None if t is None else fn(t) for name, t in tensors.items()}
    return dataclasses.replace(weights, **mapped)


def slice_experts(weights: ExpertWeights, start: int, stop: int) -> ExpertWeights:
    """Experts `[start, stop)` of `weights` (one EP rank's share); static input scales are kept."""
    total = weights.num_local_experts
    if not 0 <= start < stop <= total:
        raise ValueError(
            f"expert slice [{start}, {stop}) must be non-empty and lie within [0, {total})"
        )

    return _mapped(weights, _PER_EXPERT, lambda t: t[start:stop])


def concat_experts(parts: Sequence[ExpertWeights]) -> ExpertWeights:
    """The experts of `parts`, in order, as one `ExpertWeights` (slice_experts' inverse); the
    static input scales, pads and layout options are the first part's."""
    per_expert: dict[str, Any] = {}
    for name in _PER_EXPERT:
        tensors = [getattr(part, name) for part in parts]
        per_expert[name] = None if tensors[0] is None else torch.cat(tensors)
    return dataclasses.replace(parts[0], **per_expert)


def dequantized_weights(
    weights: ExpertWeights, quant_method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 `w13 [L, 2I, H]` and `w2 [L, H, I]` as the kernel multiplies them (padded sizes)."""
    _check_method(quant_method)
    w13, w2 = weights.w13_weight, weights.w2_weight
    s13, s2 = weights.w13_scale, weights.w2_scale
    if quant_method == "unquant":
        return w13.double(), w2.double()
    if s13 is None or s2 is None:
        raise ValueError(f"{quant_method} weights need w13_scale and w2_scale")
    dequantize = _DEQUANTIZERS[quant_method]
    return dequantize(w13, s13).double(), dequantize(w2, s2).double()

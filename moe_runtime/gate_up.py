"""Exact re-layouts of `w13`'s gate and up rows between AITER's two gate modes (load time only).

SEPARATED holds gate rows `0..I-1`, then up rows `I..2I-1`; INTERLEAVE alternates them (row `2i`
gate `i`, row `2i + 1` up `i`). SGLang 0.5.23 converts gpt-oss checkpoints (interleaved) to
separated rows the same way, for the weights, their e8m0 scales and the biases alike
(layers/quantization/mxfp4.py, process_weights_after_loading, the `gate_up_interleaved` branch:
`view(e, n // 2, 2, k).permute(0, 2, 1, 3)`). Scales move with their rows, so only scales with one
entry per row can follow (per-row fp32, per_1x32 e8m0); 128x128 block scales cover gate and up rows
together in SEPARATED order and have no interleaved form. A per-tensor scale `[L, 1]` (one per
expert weight) covers every row alike and stays as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from moe_runtime.enums import GateMode
from moe_runtime.types import ConfigError, ExpertWeights


def interleaved(weights: ExpertWeights) -> ExpertWeights:
    """SEPARATED weights with their gate and up rows interleaved (INTERLEAVE weights unchanged)."""
    if weights.gate_mode == GateMode.INTERLEAVE:
        return weights
    return _relaid(weights, _interleave_rows, GateMode.INTERLEAVE)


def separated(weights: ExpertWeights) -> ExpertWeights:
    """INTERLEAVE weights with gate rows first, then up rows (SEPARATED weights unchanged)."""
    if weights.gate_mode == GateMode.SEPARATED:
        return weights
    return _relaid(weights, _separate_rows, GateMode.SEPARATED)


def _interleave_rows(t: torch.Tensor) -> torch.Tensor:
    """[L, 2I, ...] gate-then-up -> [L, 2I, ...] alternating (dimension 1)."""
    return _bytewise(t, lambda b: _swap_row_axes(b, 2, b.shape[1] // 2))


def _separate_rows(t: torch.Tensor) -> torch.Tensor:
    """[L, 2I, ...] alternating -> [L, 2I, ...] gate-then-up (dimension 1)."""
    return _bytewise(t, lambda b: _swap_row_axes(b, b.shape[1] // 2, 2))


def _swap_row_axes(t: torch.Tensor, outer: int, inner: int) -> torch.Tensor:
    split = t.reshape(t.shape[0], outer, inner, *t.shape[2:])
    return split.transpose(1, 2).contiguous().reshape(t.shape)


def _bytewise(t: torch.Tensor, move: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Moves one-byte dtypes (fp4x2, fp8, e8m0) as uint8: torch copies few ops in those dtypes."""
    if t.element_size() != 1 or t.dtype in (torch.uint8, torch.int8):
        return move(t)
    return move(t.view(torch.uint8)).view(t.dtype)


def _relaid(
    weights: ExpertWeights, relayout: Callable[[torch.Tensor], torch.Tensor], mode: GateMode
) -> ExpertWeights:
    rows = int(weights.w13_weight.shape[1])
    if rows % 2:
        raise ConfigError(
            f"gate_mode {mode.name} needs gated w13 weights [L, 2I, H]; w13_weight has {rows} rows"
        )
    scale = weights.w13_scale
    # One scale per expert weight (per_Tensor [L, 1]): no row to move.
    per_expert = scale is not None and scale.dim() == 2 and int(scale.shape[1]) == 1
    if scale is not None and not per_expert and (scale.dim() != 3 or int(scale.shape[1]) != rows):
        raise ConfigError(
            f"w13_scale {list(scale.shape)} has no entry per w13 row ({rows} rows): block scales "
            "span gate and up rows together and cannot follow a gate/up re-layout"
        )
    return dataclasses.replace(
        weights,
        w13_weight=relayout(weights.w13_weight),
        w13_scale=scale if scale is None or per_expert else relayout(scale),
        b13=None if weights.b13 is None else relayout(weights.b13.unsqueeze(-1)).squeeze(-1),
        gate_mode=mode,
    )

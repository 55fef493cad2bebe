"""Fake `aiter.ops.shuffle`: records each call and returns a new tensor (no permutation)."""

from __future__ import annotations

import torch

from .._recorder import record


def shuffle_weight(
    x: torch.Tensor, layout: tuple[int, int] = (16, 16), use_int4: bool = False
) -> torch.Tensor:
    return record("shuffle_weight", x.clone(), x, layout, use_int4=use_int4)


def shuffle_weight_a16w4(src: torch.Tensor, NLane: int, gate_up: bool) -> torch.Tensor:
    return record("shuffle_weight_a16w4", src.clone(), src, NLane, gate_up)


def shuffle_scale_a16w4(src: torch.Tensor, experts_cnt: int, gate_up: bool) -> torch.Tensor:
    return record("shuffle_scale_a16w4", src.clone(), src, experts_cnt, gate_up)

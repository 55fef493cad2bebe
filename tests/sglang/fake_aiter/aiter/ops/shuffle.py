"""Fake `aiter.ops.shuffle`: identities (the fake kernel reads the logical layout)."""

from __future__ import annotations

import torch


def shuffle_weight(
    x: torch.Tensor, layout: tuple[int, int] = (16, 16), use_int4: bool = False
) -> torch.Tensor:
    return x


def shuffle_weight_a16w4(src: torch.Tensor, NLane: int, gate_up: bool) -> torch.Tensor:
    return src


def shuffle_scale_a16w4(src: torch.Tensor, experts_cnt: int, gate_up: bool) -> torch.Tensor:
    return src

"""Fake `aiter.int4_utils`: identities (the fake kernel reads the logical int4 layout)."""

from __future__ import annotations

import torch


def convert_int8_to_uint32_int4(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def rearrange_4bit_elements(tensor: torch.Tensor) -> torch.Tensor:
    return tensor

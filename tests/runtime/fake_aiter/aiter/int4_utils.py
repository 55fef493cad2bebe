"""Fake `aiter.int4_utils`: records the packing calls; returns new tensors of the packed shape."""

from __future__ import annotations

import torch

from ._recorder import record


def convert_int8_to_uint32_int4(tensor: torch.Tensor) -> torch.Tensor:
    packed = torch.zeros(*tensor.shape[:-1], tensor.shape[-1] // 8, dtype=torch.uint32)
    return record("convert_int8_to_uint32_int4", packed, tensor)


def rearrange_4bit_elements(tensor: torch.Tensor) -> torch.Tensor:
    return record("rearrange_4bit_elements", tensor.clone(), tensor)

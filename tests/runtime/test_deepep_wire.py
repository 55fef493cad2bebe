"""The DeepEP low-latency fp8 wire (moe_runtime.formats.deepep_ll_fp8_wire) against what a built
DeepEP v1.2.1 sent for a fixed input on an H200 (tests/vectors/deepep-v1.2.1/ll_fp8_wire.pt): bit
for bit, values and scales. AITER's 1x128 quantizer, which the emulation used before, is the
negative control: it rounds the scale differently and has no amax floor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from moe_runtime.formats import deepep_ll_fp8_wire
from moe_runtime.quant import quantize_fp8_1x128

VECTOR = Path(__file__).parents[1] / "vectors" / "deepep-v1.2.1" / "ll_fp8_wire.pt"
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _recorded() -> dict[str, Any]:
    record: dict[str, Any] = torch.load(VECTOR, weights_only=True)
    return record


@pytest.mark.parametrize("device", DEVICES)
def test_the_wire_is_deepeps_bit_for_bit(device: str) -> None:
    recorded = _recorded()
    values, scales = deepep_ll_fp8_wire(recorded["hidden_states"].to(device))
    assert values.dtype == torch.float8_e4m3fn and scales.dtype == torch.float32
    assert torch.equal(values.view(torch.uint8).cpu(), recorded["values_e4m3fn_bytes"])
    assert torch.equal(scales.cpu(), recorded["scales"])


def test_aiters_1x128_quantizer_is_not_deepeps() -> None:
    recorded = _recorded()
    values, scales = quantize_fp8_1x128(recorded["hidden_states"])
    assert not torch.equal(scales, recorded["scales"])
    assert not torch.equal(values.view(torch.uint8), recorded["values_e4m3fn_bytes"])
    # Row 0's first group is all zeros: DeepEP floors its amax at 1e-4 (scale 1e-4 / 448, by
    # hand 2.2321e-7), where AITER's quantizer gives a zero group scale 1.
    assert recorded["scales"][0, 0].item() == pytest.approx(1e-4 / 448, rel=1e-6)
    assert scales[0, 0].item() == 1.0
    # Row 7 (spread 1e-5) has every group's amax under the floor: all its scales are that one.
    assert bool((recorded["hidden_states"][7].float().abs() < 1e-4).all())
    assert bool((recorded["scales"][7] == recorded["scales"][0, 0]).all())
    assert not bool((scales[7] == recorded["scales"][0, 0]).any())

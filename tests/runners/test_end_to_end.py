"""Every generated runner at expert-parallel sizes 1, 2 and 4: emulated dispatch → per-rank runners
(reference kernel) → emulated combine, against a float64 dense MoE over all experts."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.runners.harness import ALL, DEVICES, each_key, keys, run_combination


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("key", "ep_size"), ALL, ids=[f"{'/'.join(k)}-ep{e}" for k, e in ALL])
def test_runner_matches_dense_moe(key: tuple[str, str, str], ep_size: int, device: str) -> None:
    run = run_combination(key, ep_size, device=device)
    assert run.mismatch(key[1], key[2]) is None


@each_key(
    "none/unquant/standard",
    "deepep/fp8_block/deepep_normal",
    "deepep/unquant/deepep_ll",
    "nixl/fp8_block/deepep_ll_fp8",
    "mori/fp8_channel/mori_normal",
    "mori/fp8_tensor/mori_normal_fp8",
    "mori/quark_w4a4_mxfp4/mori_ll_fp4",
    "mori/fp8_block/mori_v2_fp8",
    "mori/quark_w4a4_mxfp4/mori_v2_fp4",
    "mori/mxfp8/mori_normal_mxfp8",
    "mori/mxfp8/mori_v2_mxfp8",
    "mori/unquant/mori_ll_mxfp8",
    "mori/fp8_channel/mori_ll_fp8_token",
    "mori/quark_int4fp8/mori_normal_fp8_token",
)
def test_negative_controls_fail_the_comparison(key: tuple[str, str, str]) -> None:
    run = run_combination(key, 2)
    quant, dispatch = key[1], key[2]
    assert run.mismatch(quant, dispatch) is None

    # A zeroed rank output.
    zeroed = list(run.combine_inputs)
    zeroed[1] = zeroed[1]._replace(hidden_states=torch.zeros_like(zeroed[1].hidden_states))
    assert run.mismatch(quant, dispatch, run.combined(zeroed))

    # A dropped rank: both ranks run rank 0's experts, so rank 1's experts never contribute.
    dropped = run_combination(key, 2, rank_of_runner=lambda rank: 0)
    assert run.mismatch(quant, dispatch, dropped.combined())

    # A sink or garbage row that leaked into one token's output (the emulator fills bf16 garbage and
    # stale rows with values of this magnitude, so a leak is never small).
    leaked = run.combined().clone()
    leaked[0] += 1024.0
    assert run.mismatch(quant, dispatch, leaked)


# The new wires' runners that hand the quantized rows and their scales straight to the kernel,
# and some that upscale them: a scale the runner ignored or misread would change nothing here.
WIRE_SCALE_KEYS = keys(
    "mori/mxfp8/mori_normal_mxfp8",
    "mori/mxfp8/mori_ll_mxfp8",
    "mori/mxfp8/mori_v2_mxfp8",
    "mori/fp8_block/mori_normal_mxfp8",
    "mori/fp8_channel/mori_normal_fp8_token",
    "mori/ct_w8a8_fp8/mori_ll_fp8_token",
    "mori/quark_w8a8_fp8/mori_normal_fp8_token",
    "mori/quark_int4fp8/mori_ll_fp8_token",
    "mori/fp8_tensor/mori_normal_fp8_token",
)


def _doubled_scales(output: Any) -> Any:
    """The same dispatch output with every activation scale doubled (one more e8m0 exponent)."""
    scale = output.hidden_states_scale
    if scale.dtype == torch.float8_e8m0fnu:
        doubled = (scale.view(torch.uint8) + 1).view(torch.float8_e8m0fnu)
    else:
        doubled = scale * 2
    return output._replace(hidden_states_scale=doubled)


@pytest.mark.parametrize("key", WIRE_SCALE_KEYS, ids="/".join)
def test_new_wires_read_their_scales(key: tuple[str, str, str]) -> None:
    run = run_combination(key, 2)
    assert run.mismatch(key[1], key[2]) is None
    outputs = [_doubled_scales(output) for output in run.dispatched.outputs]
    doubled = [runner(output) for runner, output in zip(run.runners, outputs, strict=True)]
    # Twice the input: twice the output of the first (linear) GEMM, never the dense result.
    assert run.mismatch(key[1], key[2], run.combined(doubled))

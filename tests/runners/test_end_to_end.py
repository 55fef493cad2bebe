"""Every generated runner at expert-parallel sizes 1, 2 and 4: emulated dispatch → per-rank runners
(reference kernel) → emulated combine, against a float64 dense MoE over all experts."""

from __future__ import annotations

import pytest
import torch

from tests.runners.harness import ALL, DEVICES, run_combination


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("key", "ep_size"), ALL, ids=[f"{'/'.join(k)}-ep{e}" for k, e in ALL])
def test_runner_matches_dense_moe(key: tuple[str, str, str], ep_size: int, device: str) -> None:
    run = run_combination(key, ep_size, device=device)
    assert run.mismatch(key[1], key[2]) is None


NEGATIVE_KEYS = [
    ("none", "unquant", "standard"),
    ("deepep", "fp8_block", "deepep_normal"),
    ("deepep", "unquant", "deepep_ll"),
    ("nixl", "fp8_block", "deepep_ll_fp8"),
    ("mori", "fp8_channel", "mori_normal"),
    ("mori", "fp8_tensor", "mori_normal_fp8"),
    ("mori", "quark_w4a4_mxfp4", "mori_ll_fp4"),
    ("mori", "fp8_block", "mori_v2_fp8"),
    ("mori", "quark_w4a4_mxfp4", "mori_v2_fp4"),
]


@pytest.mark.parametrize("key", NEGATIVE_KEYS, ids="/".join)
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

"""Interleaved gate/up rows (`ExpertWeights.gate_mode` INTERLEAVE) end to end: the per_1x32
methods serve them at EP 1, 2 and 4 against the float64 dense MoE (which reads the rows the same
way), every other method refuses them at load, and the mode reaches the kernel bound at load."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest
import torch

import generated
from moe_runtime import kernels
from moe_runtime import types as t
from moe_runtime.enums import GateMode
from moe_runtime.testing import emulate
from moe_runtime.testing.recording import RecordingKernel
from moe_runtime.testing.weights import make_expert_weights
from tests.runners.harness import (
    DEVICES,
    EP_SIZES,
    HIDDEN,
    INTERMEDIATE,
    keys,
    layer_activation,
    run_combination,
)

# mxfp4 (gpt-oss: interleaved checkpoints) and quark_w4a4_mxfp4, on the standard format and on an
# expert-parallel format of each family (DeepEP normal and low-latency, MORI normal).
INTERLEAVED_KEYS = keys(
    "none/mxfp4/standard",
    "deepep/mxfp4/deepep_normal",
    "mori/mxfp4/mori_normal",
    "none/quark_w4a4_mxfp4/standard",
    "deepep/quark_w4a4_mxfp4/deepep_ll",
    "mori/quark_w4a4_mxfp4/mori_normal",
    "none/mxfp8/standard",
    "deepep/quark_w4a8_mxfp4/deepep_normal",
    "deepep/mxfp8/deepep_ll",
    "mori/mxfp8/mori_normal_fp8",
)
CASES = [(key, ep) for key in INTERLEAVED_KEYS for ep in EP_SIZES]
SEPARATED_ONLY = [
    "unquant", "fp8_channel", "fp8_tensor", "ct_w8a8_fp8", "quark_int4fp8", "quark_w8a8_fp8"
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("key", "ep_size"), CASES, ids=[f"{'/'.join(k)}-ep{e}" for k, e in CASES])
def test_interleaved_weights_match_dense_moe(
    key: tuple[str, str, str], ep_size: int, device: str
) -> None:
    run = run_combination(key, ep_size, device=device, gate_mode=GateMode.INTERLEAVE)
    assert all(w.gate_mode == GateMode.INTERLEAVE for w in run.weights)
    assert run.mismatch(key[1], key[2]) is None


@pytest.mark.parametrize("key", INTERLEAVED_KEYS, ids="/".join)
def test_a_wrong_gate_mode_fails_the_comparison(key: tuple[str, str, str]) -> None:
    quant, dispatch = key[1], key[2]
    # Interleaved rows that the weights call separated: the kernel pairs gate and up rows wrongly.
    mislabelled = run_combination(
        key, 2, gate_mode=GateMode.INTERLEAVE, claimed_gate_mode=GateMode.SEPARATED
    )
    assert mislabelled.mismatch(quant, dispatch)
    # And the other way round.
    reversed_ = run_combination(key, 2, claimed_gate_mode=GateMode.INTERLEAVE)
    assert reversed_.mismatch(quant, dispatch)
    # The same seed in the right mode passes: the controls fail for the mode alone.
    assert run_combination(key, 2, gate_mode=GateMode.INTERLEAVE).mismatch(quant, dispatch) is None


def _config(quant: str) -> t.MoeLayerConfig:
    return t.MoeLayerConfig(8, 8, 0, 1, 2, HIDDEN, INTERMEDIATE, layer_activation(quant))


@pytest.mark.parametrize("quant", SEPARATED_ONLY)
def test_methods_whose_kernels_read_separated_rows_refuse_interleaved_weights(quant: str) -> None:
    weights = make_expert_weights(quant, 8, HIDDEN, INTERMEDIATE, seed=0)
    interleaved = make_expert_weights(
        quant, 8, HIDDEN, INTERMEDIATE, seed=0, gate_mode=GateMode.INTERLEAVE
    )
    runner_type = generated.select("none", quant, "standard")
    runner_type(_config(quant), weights, kernel=RecordingKernel())
    with pytest.raises(t.ConfigError) as raised:
        runner_type(_config(quant), interleaved, kernel=RecordingKernel())
    assert str(raised.value) == (
        f"weights do not fit a {quant} runner: weights have gate_mode INTERLEAVE (gate and up "
        f"rows alternate), but {quant}'s kernels read gate rows then up rows only (gate_mode "
        "SEPARATED)"
    )


def test_fp8_block_weights_have_no_interleaved_form() -> None:
    with pytest.raises(t.ConfigError, match="block scales span gate and up rows together"):
        make_expert_weights(
            "fp8_block", 8, HIDDEN, INTERMEDIATE, seed=0, gate_mode=GateMode.INTERLEAVE
        )
    # Weights that merely say so are refused by the runner, like every separated-only method's.
    weights = make_expert_weights("fp8_block", 8, HIDDEN, INTERMEDIATE, seed=0)
    runner_type = generated.select("none", "fp8_block", "standard")
    with pytest.raises(t.ConfigError, match="fp8_block's kernels read gate rows then up rows"):
        runner_type(
            _config("fp8_block"), dataclasses.replace(weights, gate_mode=GateMode.INTERLEAVE)
        )


class GateModeRecorder(RecordingKernel):
    """A recording kernel that also takes AITER's `gate_mode` (v0.1.14) by name."""

    def __call__(
        self,
        *args: Any,
        gate_mode: str | None = None,  # None: not passed (AITER's default is "separated")
        **kwargs: Any,
    ) -> torch.Tensor:
        passed = {} if gate_mode is None else {"gate_mode": gate_mode}
        return super().__call__(*args, **passed, **kwargs)


@pytest.mark.parametrize("quant", ["mxfp4", "quark_w4a4_mxfp4"])
def test_the_gate_mode_is_bound_into_the_kernel_only_when_interleaved(quant: str) -> None:
    batch = emulate.make_batch(3, HIDDEN, 8, 2, ep_size=1, seed=1)
    output = emulate.dispatch(batch, "standard").outputs[0]
    runner_type = generated.select("none", quant, "standard")
    for mode, passed in ((GateMode.INTERLEAVE, "interleave"), (GateMode.SEPARATED, None)):
        kernel = GateModeRecorder()
        weights = make_expert_weights(quant, 8, HIDDEN, INTERMEDIATE, seed=0, gate_mode=mode)
        runner = runner_type(_config(quant), weights, kernel=kernel)
        runner(output)
        runner(output)
        # Bound once at load: every call carries it; SEPARATED leaves the kernel's default.
        assert [call.get("gate_mode") for call in kernel.calls] == [passed, passed]


def test_a_kernel_without_gate_mode_is_refused_for_interleaved_weights() -> None:
    weights = make_expert_weights(
        "mxfp4", 8, HIDDEN, INTERMEDIATE, seed=0, gate_mode=GateMode.INTERLEAVE
    )
    kernel = RecordingKernel()  # fused_moe's v0.1.7.post2 keywords only (through **kwargs)
    with pytest.raises(t.ConfigError) as raised:
        generated.select("none", "mxfp4", "standard")(_config("mxfp4"), weights, kernel=kernel)
    assert str(raised.value).startswith(
        "weights with gate_mode INTERLEAVE needs a kernel with a `gate_mode` keyword (AITER's "
        "fused_moe has it from v0.1.14); the bound kernel ("
    )


def test_the_bound_kernel_is_never_probed_at_load_or_per_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`kernels.KEYWORDS` was read when the kernel was bound; neither Runner.__init__ nor the
    hot path inspects a signature again."""

    def no_probe(*args: object, **kwargs: object) -> inspect.Signature:
        raise AssertionError("a signature was inspected after the kernel was bound")

    weights = make_expert_weights(
        "mxfp4", 8, HIDDEN, INTERMEDIATE, seed=0, gate_mode=GateMode.INTERLEAVE
    )
    output = emulate.dispatch(
        emulate.make_batch(3, HIDDEN, 8, 2, ep_size=1, seed=1), "standard"
    ).outputs[0]
    monkeypatch.setattr(inspect, "signature", no_probe)
    runner = generated.select("none", "mxfp4", "standard")(
        dataclasses.replace(_config("mxfp4"), swiglu_limit=7.0), weights
    )
    assert runner(output).hidden_states.shape == (3, HIDDEN)
    assert "gate_mode" in kernels.KEYWORDS

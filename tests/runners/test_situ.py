"""The situ activation (AITER's Situv2, v0.1.19, with `beta` and `linear_beta`): the reference
kernel against a float64 pair oracle, the mxfp4 runners end to end at EP 1, 2, 4 against the
dense float64 MoE, and the load-time refusals; every comparison with a negative control."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import generated
from moe_runtime import quant
from moe_runtime import types as t
from moe_runtime.enums import ActivationType, QuantType
from moe_runtime.kernels.reference import ReferenceFusedMoe
from moe_runtime.testing.dense import dense_layer, dense_mismatch, moe_close
from moe_runtime.testing.recording import RecordingKernel
from moe_runtime.testing.weights import make_expert_weights
from tests.runners.harness import DEVICES, EP_SIZES, HIDDEN, INTERMEDIATE, run_combination

KEYS = [("none", "mxfp4", "standard"), ("deepep", "mxfp4", "deepep_normal"),
        ("mori", "mxfp4", "mori_normal")]  # fmt: skip
CASES = [(key, ep) for key in KEYS for ep in EP_SIZES]
BETAS = (0.5, 2.0)


def _situ_pair(h: list[float], inter: int, beta: float, linear_beta: float) -> list[float]:
    """One pair's Situv2 in float64 scalars, from AITER's kernel (mixed_moe_gemm_2stage.py
    v0.1.19, situ_mul_vec4): gate clamped to <= 7, up to [-7, 7]."""
    out = []
    for i in range(inter):
        g, u = min(h[i], 7.0), max(-7.0, min(h[inter + i], 7.0))
        situ = beta * math.tanh(g / beta) / (1 + math.exp(-g))
        out.append(situ * linear_beta * math.tanh(u / linear_beta))
    return out


def _oracle(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, ids: torch.Tensor,
            weights: torch.Tensor, betas: tuple[float, float]) -> torch.Tensor:  # fmt: skip
    inter = w2.shape[2]
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=torch.float64)
    for row in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[row, k])
            h = (w13[e] @ x[row]).tolist()
            a = torch.tensor(_situ_pair(h, inter, *betas), dtype=torch.float64)
            a = a.to(torch.bfloat16).double()  # rounding point 1: bf16 stage-1 output
            out[row] += float(weights[row, k]) * (w2[e] @ a)
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_reference_situv2_matches_the_pair_oracle(device: str) -> None:
    g = torch.Generator().manual_seed(3)
    w13 = torch.randn(3, 64, 32, generator=g) / 32**0.5 * 3
    w2 = torch.randn(3, 32, 32, generator=g) / 32**0.5
    (q13, s13), (q2, s2) = quant.quantize_mxfp4(w13), quant.quantize_mxfp4(w2)
    d13, d2 = quant.dequantize_mxfp4(q13, s13).double(), quant.dequantize_mxfp4(q2, s2).double()
    x = torch.randn(5, 32, generator=g).bfloat16()
    ids = torch.randint(0, 3, (5, 2), generator=g, dtype=torch.int32)
    weights = torch.rand(5, 2, generator=g)
    kw: dict[str, Any] = {"w1_scale": s13.to(device), "w2_scale": s2.to(device),
                          "activation": ActivationType.Situv2, "quant_type": QuantType.per_1x32}

    def run(**extra: Any) -> torch.Tensor:
        return ReferenceFusedMoe()(x.to(device), q13.to(device), q2.to(device),
                                   weights.to(device), ids.to(device), **kw, **extra).cpu()

    expected = _oracle(x.double(), d13, d2, ids, weights, BETAS)
    actual = run(beta=BETAS[0], linear_beta=BETAS[1])
    assert moe_close(actual, expected, "unquant")
    # AITER reads None as 1.0.
    assert moe_close(run(), _oracle(x.double(), d13, d2, ids, weights, (1.0, 1.0)), "unquant")
    # Negative controls: the default betas, and Swiglu on the same call.
    assert not moe_close(run(), expected, "unquant")
    swiglu = {**kw, "activation": ActivationType.Swiglu}
    assert not moe_close(ReferenceFusedMoe()(x.to(device), q13.to(device), q2.to(device),
                         weights.to(device), ids.to(device), **swiglu).cpu(), expected, "unquant")


def test_reference_refuses_situv2_off_fp4_weights() -> None:
    w13, w2 = torch.randn(2, 64, 32).bfloat16(), torch.randn(2, 32, 32).bfloat16()
    with pytest.raises(ValueError, match="Situv2 runs on AITER's a16w4 kernels only"):
        ReferenceFusedMoe()(torch.randn(3, 32).bfloat16(), w13, w2, torch.rand(3, 1),
                            torch.zeros(3, 1, dtype=torch.int32),
                            activation=ActivationType.Situv2)  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("key", "ep_size"), CASES, ids=[f"{'/'.join(k)}-ep{e}" for k, e in CASES])
def test_situ_layers_match_dense_moe(key: tuple[str, str, str], ep_size: int, device: str) -> None:
    quant_name, dispatch = key[1], key[2]
    run = run_combination(key, ep_size, device=device, situ_betas=BETAS)
    assert all(c.activation == "situ" for c in run.configs)
    assert run.mismatch(quant_name, dispatch) is None
    # Negative controls (same seed): other betas, and the Swiglu the method forces otherwise.
    other = run_combination(key, ep_size, device=device, situ_betas=(1.0, 1.0))
    assert run.mismatch(quant_name, dispatch, other.combined()) is not None
    swiglu = run_combination(key, ep_size, device=device)
    assert run.mismatch(quant_name, dispatch, swiglu.combined()) is not None


class SituRecorder(RecordingKernel):
    """A recording kernel that takes AITER v0.1.19's `beta` and `linear_beta` by name and records
    those passed (an unpassed one is absent from the call)."""

    def __call__(
        self, *args: Any, beta: float | None = None, linear_beta: float | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:  # fmt: skip
        betas = {"beta": beta, "linear_beta": linear_beta}
        passed = {name: value for name, value in betas.items() if value is not None}
        return super().__call__(*args, **passed, **kwargs)


def _situ_config(**extra: Any) -> t.MoeLayerConfig:
    return t.MoeLayerConfig(8, 8, 0, 1, 2, HIDDEN, INTERMEDIATE, "situ", **extra)


def test_the_betas_and_situv2_are_bound_at_load() -> None:
    from moe_runtime.testing import emulate

    weights = make_expert_weights("mxfp4", 8, HIDDEN, INTERMEDIATE, seed=0)
    kernel = SituRecorder()
    runner = generated.select("none", "mxfp4", "standard")(
        _situ_config(situ_beta=0.5, situ_linear_beta=2.0), weights, kernel=kernel
    )
    batch = emulate.make_batch(3, HIDDEN, 8, 2, ep_size=1, seed=1)
    runner(emulate.dispatch(batch, "standard").outputs[0])
    call = kernel.only_call()
    assert (call["beta"], call["linear_beta"]) == (0.5, 2.0)
    assert int(call["activation"]) == int(ActivationType.Situv2)


def test_unset_betas_are_not_passed_and_read_as_one() -> None:
    """A situ layer that sets no betas passes neither (as SGLang does; AITER reads 1.0), one that
    sets one passes that one; the unset layer's output is situ with both betas 1.0."""
    from moe_runtime.testing import emulate

    weights = make_expert_weights("mxfp4", 8, HIDDEN, INTERMEDIATE, seed=0)
    batch = emulate.make_batch(3, HIDDEN, 8, 2, ep_size=1, seed=1)
    dispatch_output = emulate.dispatch(batch, "standard").outputs[0]
    select = generated.select("none", "mxfp4", "standard")
    unset, beta_only = SituRecorder(), SituRecorder()
    select(_situ_config(), weights, kernel=unset)(dispatch_output)
    select(_situ_config(situ_beta=0.5), weights, kernel=beta_only)(dispatch_output)
    runner = select(_situ_config(), weights, kernel=ReferenceFusedMoe())
    out = runner(dispatch_output).hidden_states
    assert "beta" not in unset.only_call().kwargs and "linear_beta" not in unset.only_call().kwargs
    assert beta_only.only_call().kwargs["beta"] == 0.5
    assert "linear_beta" not in beta_only.only_call().kwargs
    ones = dense_layer(batch, weights, "mxfp4", activation="situ", situ_betas=(1.0, 1.0))
    assert dense_mismatch(out, ones, "mxfp4", "standard") is None
    # Negative control: other betas are another output.
    other = dense_layer(batch, weights, "mxfp4", activation="situ", situ_betas=(0.5, 2.0))
    assert dense_mismatch(out, other, "mxfp4", "standard") is not None


def test_a_kernel_without_beta_is_refused_for_situ() -> None:
    weights = make_expert_weights("mxfp4", 8, HIDDEN, INTERMEDIATE, seed=0)
    with pytest.raises(t.ConfigError) as raised:
        generated.select("none", "mxfp4", "standard")(_situ_config(), weights,
                                                        kernel=RecordingKernel())  # fmt: skip
    assert str(raised.value).startswith(
        "the situ activation needs a kernel with a `beta` keyword (AITER's fused_moe has it from "
        "v0.1.19)"
    )


@pytest.mark.parametrize("quant_name", ["unquant", "fp8_block", "quark_w4a4_mxfp4"])
def test_methods_of_the_layer_activation_refuse_situ(quant_name: str) -> None:
    weights = make_expert_weights(quant_name, 8, HIDDEN, INTERMEDIATE, seed=0)
    with pytest.raises(t.ConfigError, match=r"activation situ .* served by the mxfp4 runners"):
        generated.select("none", quant_name, "standard")(_situ_config(), weights,
                                                         kernel=SituRecorder())  # fmt: skip

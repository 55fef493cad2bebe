"""SwiGLU-OAI detection and situ's parameters (moe_runtime.layer_options), as SGLang 0.5.23's
AITER path reads them (layers/moe/moe_runner/aiter.py:119-139, :218-225), and a detected layer end
to end through the unquant runner against the dense float64 MoE, with negative controls."""

from __future__ import annotations

from typing import Any

import pytest

import generated
from moe_runtime import types as t
from moe_runtime.kernels.reference import ReferenceFusedMoe
from moe_runtime.layer_options import RunnerActivation
from moe_runtime.testing import emulate
from moe_runtime.testing.dense import dense_layer, moe_close
from moe_runtime.testing.weights import make_expert_weights

OAI: dict[str, Any] = {"activation": "silu", "is_gated": True, "alpha": 1.702, "beta": None,
                       "clamp_limit": 7.0, "gfx95": True}  # fmt: skip


def _limit(**changes: Any) -> float | None:
    return RunnerActivation(**{**OAI, **changes}).swiglu_oai_limit()


def activation_fields(*args: Any, gfx95: bool) -> dict[str, str | float]:
    return RunnerActivation(*args, gfx95=gfx95).config_fields()


def test_swiglu_oai_is_detected() -> None:
    assert _limit() == 7.0
    assert _limit(beta=1.0, clamp_limit=10) == 10.0


@pytest.mark.parametrize(
    "changes",
    [{"gfx95": False}, {"activation": "gelu"}, {"is_gated": False}, {"alpha": 1.7},
     {"alpha": None}, {"beta": 0.5}, {"clamp_limit": None}],
)  # fmt: skip
def test_anything_else_is_not_swiglu_oai(changes: dict[str, Any]) -> None:
    assert _limit(**changes) is None


def test_activation_fields() -> None:
    assert activation_fields("silu", True, 1.702, None, 7.0, gfx95=True) == {
        "activation": "swiglu", "swiglu_limit": 7.0}  # fmt: skip
    assert activation_fields("silu", True, 1.702, None, 7.0, gfx95=False) == {"activation": "silu"}
    assert activation_fields("situ", True, 0.5, None, 2.0, gfx95=True) == {
        "activation": "situ", "situ_beta": 0.5, "situ_linear_beta": 2.0}  # fmt: skip
    # Unset, neither is passed (SGLang passes none; AITER reads 1.0).
    assert activation_fields("situ", True, None, None, None, gfx95=False) == {"activation": "situ"}
    assert activation_fields("situ", True, 1.0, None, None, gfx95=False) == {
        "activation": "situ", "situ_beta": 1.0}  # fmt: skip
    assert activation_fields("gelu", True, None, None, None, gfx95=True) == {"activation": "gelu"}


def test_a_detected_layer_runs_as_clamped_swiglu() -> None:
    """A SwiGLU-OAI layer (limit 0.5, so the clamp matters) through the unquant runner with the
    reference kernel, against dense float64 Swiglu; SiLU (the undetected layer) and Swiglu with
    the default limit are the negative controls."""
    fields = activation_fields("silu", True, 1.702, None, 0.5, gfx95=True)
    config = t.MoeLayerConfig(8, 8, 0, 1, 2, 128, 64, **fields)
    weights = make_expert_weights("unquant", 8, 128, 64, seed=0)
    batch = emulate.make_batch(6, 128, 8, 2, ep_size=1, seed=1)
    runner = generated.select("none", "unquant", "standard")(
        config, weights, kernel=ReferenceFusedMoe()
    )
    actual = runner(emulate.dispatch(batch, "standard").outputs[0]).hidden_states
    expected = dense_layer(batch, weights, "unquant", activation="swiglu")
    clamped = _dense_with_limit(batch, weights, 0.5)
    assert moe_close(actual, clamped, "unquant")
    assert not moe_close(actual, expected, "unquant")  # the default limit 7
    assert not moe_close(actual, dense_layer(batch, weights, "unquant", activation="silu"),
                         "unquant")  # fmt: skip


def _dense_with_limit(batch: Any, weights: t.ExpertWeights, limit: float) -> Any:
    from moe_runtime.testing.dense import dense_moe_float64
    from moe_runtime.testing.weights import dequantized_weights

    w13, w2 = dequantized_weights(weights, "unquant")
    return dense_moe_float64(batch.hidden_states, batch.topk_ids, batch.topk_weights, w13, w2,
                             activation="swiglu", swiglu_limit=limit)  # fmt: skip

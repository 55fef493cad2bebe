"""Load-time decisions of generated runners: what they refuse (with a message that says why) and
the per-layer options they bind once (router weight on input, swiglu_limit)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import generated
from moe_runtime import types as t
from moe_runtime.testing import emulate
from moe_runtime.testing.dense import dense_moe_float64
from moe_runtime.testing.recording import RecordingKernel
from moe_runtime.testing.weights import dequantized_weights, make_expert_weights
from tests.runners.harness import HIDDEN, INTERMEDIATE, dense_mismatch

E = 8


def config(**changes: object) -> t.MoeLayerConfig:
    base = t.MoeLayerConfig(E, E, 0, 1, 2, HIDDEN, INTERMEDIATE, "silu")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_weights_of_another_method_are_refused() -> None:
    runner = generated.select("none", "fp8_block", "standard")
    with pytest.raises(t.ConfigError, match=r"w13_weight is torch\.bfloat16, fp8_block needs"):
        runner(config(), make_expert_weights("unquant", E, HIDDEN, INTERMEDIATE, seed=0))
    fp8 = make_expert_weights("fp8_block", E, HIDDEN, INTERMEDIATE, seed=0)
    with pytest.raises(t.ConfigError, match="needs w13_scale and w2_scale"):
        runner(config(), dataclasses.replace(fp8, w13_scale=None))
    with pytest.raises(t.ConfigError, match="weights hold 8 experts, the config says"):
        runner(config(num_experts=16, num_local_experts=16), fp8)


def test_router_weight_on_input_is_refused_where_the_format_weights() -> None:
    weights = make_expert_weights("unquant", E // 2, HIDDEN, INTERMEDIATE, seed=0)
    layer = config(num_local_experts=4, ep_size=2, apply_router_weight_on_input=True)
    for key in [("deepep", "unquant", "deepep_normal"), ("nixl", "unquant", "deepep_ll")]:
        with pytest.raises(t.ConfigError, match="apply_router_weight_on_input is not supported"):
            generated.select(*key)(layer, weights)


def test_router_weight_on_input_needs_top_k_one() -> None:
    weights = make_expert_weights("unquant", E, HIDDEN, INTERMEDIATE, seed=0)
    with pytest.raises(t.ConfigError, match="needs top_k == 1"):
        generated.select("none", "unquant", "standard")(
            config(apply_router_weight_on_input=True), weights
        )


def test_router_weight_on_input_scales_rows_and_passes_weights_of_one() -> None:
    weights = make_expert_weights("unquant", E, HIDDEN, INTERMEDIATE, seed=0)
    batch = emulate.make_batch(9, HIDDEN, E, 1, ep_size=1, seed=4)
    # A top-1 softmax weighs 1.0; a router with a sigmoid score (Llama 4) does not.
    scores = torch.linspace(0.2, 0.9, 9).unsqueeze(1)
    batch = dataclasses.replace(batch, topk_weights=scores)
    output = emulate.dispatch(batch, "standard").outputs[0]
    layer = config(top_k=1, apply_router_weight_on_input=True)

    kernel = RecordingKernel()
    generated.select("none", "unquant", "standard")(layer, weights, kernel=kernel)(output)
    call = kernel.calls[0]
    assert torch.equal(call["topk_weight"], torch.ones_like(batch.topk_weights))
    scaled = batch.hidden_states * batch.topk_weights.to(torch.bfloat16)
    assert torch.equal(call["hidden_states"], scaled)

    result = generated.select("none", "unquant", "standard")(layer, weights)(output)
    w13, w2 = dequantized_weights(weights, "unquant")
    expected = dense_moe_float64(
        scaled, batch.topk_ids, torch.ones_like(batch.topk_weights), w13, w2, activation="silu"
    )
    assert dense_mismatch(result.hidden_states, expected, "unquant", "standard") is None
    # Negative control: weighting twice (input and kernel) is not the same MoE.
    twice = dense_moe_float64(
        scaled, batch.topk_ids, batch.topk_weights, w13, w2, activation="silu"
    )
    assert dense_mismatch(result.hidden_states, twice, "unquant", "standard") is not None


def test_mxfp4_routes_the_router_weight_into_stage_one() -> None:
    weights = make_expert_weights("mxfp4", E, HIDDEN, INTERMEDIATE, seed=0)
    batch = emulate.make_batch(4, HIDDEN, E, 1, ep_size=1, seed=4)
    kernel = RecordingKernel()
    layer = config(top_k=1, activation="swiglu", apply_router_weight_on_input=True)
    generated.select("none", "mxfp4", "standard")(layer, weights, kernel=kernel)(
        emulate.dispatch(batch, "standard").outputs[0]
    )
    assert kernel.calls[0]["doweight_stage1"] is True
    assert torch.equal(kernel.calls[0]["hidden_states"], batch.hidden_states)


def test_padded_weights_need_a_method_that_pads() -> None:
    weights = make_expert_weights("unquant", E, 224, INTERMEDIATE, seed=0, hidden_pad=32)
    with pytest.raises(t.ConfigError, match="hidden_pad=32: this runner's quant method does not"):
        generated.select("none", "unquant", "standard")(config(hidden_size=224), weights)


def test_swiglu_limit_is_bound_only_into_kernels_that_take_it() -> None:
    weights = make_expert_weights("mxfp4", E, HIDDEN, INTERMEDIATE, seed=0)
    layer = config(activation="swiglu", swiglu_limit=5.0)
    runner_type = generated.select("none", "mxfp4", "standard")
    with pytest.raises(t.ConfigError, match="needs a kernel with a `swiglu_limit` keyword"):
        runner_type(layer, weights, kernel=RecordingKernel())

    seen: dict[str, object] = {}

    def kernel_with_limit(
        hidden_states: torch.Tensor,
        w1: torch.Tensor,
        w2: torch.Tensor,
        topk_weight: torch.Tensor,
        topk_ids: torch.Tensor,
        *,
        swiglu_limit: float = 0.0,
        **kwargs: object,
    ) -> torch.Tensor:
        seen["swiglu_limit"] = swiglu_limit
        return hidden_states

    batch = emulate.make_batch(3, HIDDEN, E, 2, ep_size=1, seed=1)
    runner_type(layer, weights, kernel=kernel_with_limit)(
        emulate.dispatch(batch, "standard").outputs[0]
    )
    assert seen == {"swiglu_limit": 5.0}
    # Without a limit nothing is bound: the recording kernel (no such keyword) is accepted.
    kernel = RecordingKernel()
    runner_type(config(activation="swiglu"), weights, kernel=kernel)(
        emulate.dispatch(batch, "standard").outputs[0]
    )
    assert "swiglu_limit" not in kernel.calls[0]

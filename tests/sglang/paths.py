"""One combination on every rank through SGLang's `MoeRunner.run`, natively and with the generated
runner installed, on the same SGLang dispatch-output objects."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from moe_runtime import types as t
from moe_runtime.testing import emulate
from moe_runtime.testing.dense import dense_layer
from moe_runtime.testing.weights import make_expert_weights, slice_experts
from tests.sglang import harness

NUM_EXPERTS, HIDDEN, INTERMEDIATE, TOP_K, TOKENS = 8, 256, 128, 3, 13


def rank_config(rank: int, ep_size: int, activation: str = "silu") -> t.MoeLayerConfig:
    """The test layer's config on one rank of `ep_size` (experts split evenly)."""
    sizes = {"top_k": TOP_K, "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE}
    local = NUM_EXPERTS // ep_size
    return t.MoeLayerConfig(NUM_EXPERTS, local, rank, ep_size, activation=activation, **sizes)


def set_layer_placement(layer: Any, layer_id: int, config: t.MoeLayerConfig) -> None:
    """The FusedMoE attributes SGLang's quant methods read of a layer's id, EP placement and
    sizes, set as FusedMoE.__init__ sets them (the tests' layers skip that __init__)."""
    layer.layer_id = layer_id
    layer.moe_ep_rank, layer.moe_ep_size = config.ep_rank, config.ep_size
    layer.num_experts, layer.num_local_experts = config.num_experts, config.num_local_experts
    layer.top_k, layer.hidden_size = config.top_k, config.hidden_size
    layer.intermediate_size_per_partition = config.intermediate_size


def layer_activation(quant: str) -> str:
    # Mxfp4MoEMethod builds its runner with swiglu; every other method keeps the model's silu.
    return "swiglu" if quant == "mxfp4" else "silu"


@dataclasses.dataclass
class Rank:
    dispatch_output: Any  # SGLang's own class
    native: Any  # SGLang's combine input, or the exception its path raised
    native_call: dict[str, Any] | None
    installed: Any
    installed_call: dict[str, Any] | None


@dataclasses.dataclass
class Paths:
    dispatched: emulate.Dispatched
    ranks: list[Rank]
    expected: torch.Tensor  # the float64 dense MoE over all experts


def _run(runner: Any, dispatch_output: Any, info: Any) -> tuple[Any, dict[str, Any] | None]:
    before = len(harness.aiter.CALLS)
    try:
        result = runner.run(dispatch_output, info)
    except Exception as error:  # SGLang's path fails in many ways where it is wrong
        return error, None
    called = len(harness.aiter.CALLS) > before
    return result, harness.last_call() if called else None


def run_paths(key: tuple[str, str, str], ep_size: int, *, seed: int = 0) -> Paths:
    a2a, quant, dispatch = key
    harness.set_a2a_backend(a2a)
    weights = make_expert_weights(quant, NUM_EXPERTS, HIDDEN, INTERMEDIATE, seed=seed)
    batch = emulate.make_batch(TOKENS, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=ep_size, seed=seed + 1)
    dispatched = emulate.dispatch(batch, dispatch)
    local = NUM_EXPERTS // ep_size
    ranks = []
    for rank, ours in enumerate(dispatched.outputs):
        config = rank_config(rank, ep_size, layer_activation(quant))
        rank_weights = slice_experts(weights, rank * local, (rank + 1) * local)
        dispatch_output = harness.sglang_dispatch_output(ours)
        dispatcher = harness.Dispatcher(a2a, config)
        try:
            info = harness.quant_info(quant, rank_weights, dispatcher, dispatch_output)
        except AttributeError as error:  # the quant method's apply fails before MoeRunner.run
            ranks.append(Rank(dispatch_output, error, None, None, None))
            continue
        native, native_call = _run(harness.moe_runner(config), dispatch_output, info)
        runner = harness.moe_runner(config)
        harness.install(runner, key, config, info)
        installed, installed_call = _run(runner, dispatch_output, info)
        ranks.append(Rank(dispatch_output, native, native_call, installed, installed_call))
    expected = dense_layer(batch, weights, quant, activation=layer_activation(quant))
    return Paths(dispatched, ranks, expected)

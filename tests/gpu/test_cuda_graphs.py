"""CUDA only (run on the H100, see benchmarks/RESULTS.md): the graph-safe reference kernel and whole
generated runners capture in a CUDA graph, replay to the eager result, and never sync the host."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import generated
from moe_runtime import types as t
from moe_runtime.kernels.reference import ReferenceFusedMoe
from moe_runtime.testing import emulate
from moe_runtime.testing.weights import make_expert_weights, slice_experts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")

E, H, INTER, K, T, EP = 8, 256, 128, 2, 16, 2
GRAPH_SAFE = ReferenceFusedMoe(graph_safe=True)
# Formats whose shapes do not depend on the data (DeepEP normal's row count does).
STATIC_KEYS = [
    ("none", "unquant", "standard"),
    ("none", "fp8_block", "standard"),
    ("deepep", "unquant", "deepep_ll"),
    ("nixl", "fp8_block", "deepep_ll_fp8"),
    ("deepep", "fp8_channel", "deepep_ll_fp8"),  # the slab upscale (Triton on a GPU)
    ("mooncake", "quark_w4a4_mxfp4", "deepep_ll"),
    ("mori", "fp8_channel", "mori_normal"),
    ("mori", "fp8_block", "mori_normal_fp8"),
    ("mori", "mxfp4", "mori_ll_fp4"),
    ("mori", "unquant", "mori_ll_fp8"),
]


def capture_and_replay(fn: Callable[[], Any]) -> tuple[Any, Any]:
    """Eager result, then the result of a captured graph replayed with sync debug mode 'error'."""
    eager = fn()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # warm-up on a side stream, as CUDA graph capture requires
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.graph(graph):
            captured = fn()
        graph.replay()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return eager, captured


def test_graph_safe_reference_replays_to_the_eager_result() -> None:
    weights = make_expert_weights("fp8_block", E, H, INTER, seed=0, device="cuda")
    batch = emulate.make_batch(T, H, E, K, ep_size=1, seed=1, device="cuda")
    mask = torch.ones(E + 1, dtype=torch.int32, device="cuda")
    mask[-1] = 0

    def call() -> torch.Tensor:
        return GRAPH_SAFE(
            batch.hidden_states,
            weights.w13_weight,
            weights.w2_weight,
            batch.topk_weights,
            batch.topk_ids,
            expert_mask=mask,
            quant_type=5,
            w1_scale=weights.w13_scale,
            w2_scale=weights.w2_scale,
        )

    eager, replayed = capture_and_replay(call)
    assert torch.equal(eager, replayed)
    assert torch.count_nonzero(eager) > 0  # negative control: a zero output would not be a result


@pytest.mark.parametrize("key", STATIC_KEYS, ids="/".join)
def test_runner_replays_to_the_eager_result_without_host_syncs(key: tuple[str, str, str]) -> None:
    _, quant, dispatch = key
    weights = make_expert_weights(quant, E, H, INTER, seed=0, device="cuda")
    batch = emulate.make_batch(T, H, E, K, ep_size=EP, seed=2, device="cuda")
    output = emulate.dispatch(batch, dispatch).outputs[1]
    activation = "swiglu" if quant == "mxfp4" else "silu"
    config = t.MoeLayerConfig(E, E // EP, 1, EP, K, H, INTER, activation)
    runner = generated.select(*key)(config, slice_experts(weights, E // EP, E), kernel=GRAPH_SAFE)
    eager, replayed = capture_and_replay(lambda: runner(output))
    assert torch.equal(eager.hidden_states, replayed.hidden_states)
    assert torch.count_nonzero(eager.hidden_states) > 0

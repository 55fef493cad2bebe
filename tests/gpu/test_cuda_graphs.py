"""CUDA only (run on the H100, see benchmarks/RESULTS.md): the graph-safe reference kernel and whole
generated runners capture in a CUDA graph, replay to the eager result, and never sync the host."""

from __future__ import annotations

import pytest
import torch

import generated
from moe_runtime.testing import emulate
from moe_runtime.testing.weights import make_expert_weights
from tests.gpu.graphs import (
    GRAPH_SAFE,
    INTER,
    STATIC_KEYS,
    E,
    H,
    K,
    T,
    capture_and_replay,
    rank_one,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


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
    config, weights, output = rank_one(key)
    runner = generated.select(*key)(config, weights, kernel=GRAPH_SAFE)
    eager, replayed = capture_and_replay(lambda: runner(output))
    assert torch.equal(eager.hidden_states, replayed.hidden_states)
    assert torch.count_nonzero(eager.hidden_states) > 0

"""CUDA only: a checked runner (`select(..., checked=True)`) captures in a CUDA graph, replays to
the eager result, and never syncs the host: its value checks are device-side asserts.

A failing device assert poisons the CUDA context, so this file only runs good input; the
failing checks are tested on the CPU (tests/runners/test_checked.py)."""

from __future__ import annotations

import pytest
import torch

import generated
from moe_runtime import types as t
from moe_runtime.testing import emulate
from moe_runtime.testing.weights import make_expert_weights, slice_experts
from tests.gpu.test_cuda_graphs import (
    EP,
    GRAPH_SAFE,
    INTER,
    STATIC_KEYS,
    E,
    H,
    K,
    T,
    capture_and_replay,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@pytest.mark.parametrize("key", STATIC_KEYS, ids="/".join)
def test_checked_runner_replays_to_the_eager_result_without_host_syncs(
    key: tuple[str, str, str],
) -> None:
    _, quant, dispatch = key
    weights = make_expert_weights(quant, E, H, INTER, seed=0, device="cuda")
    batch = emulate.make_batch(T, H, E, K, ep_size=EP, seed=2, device="cuda")
    output = emulate.dispatch(batch, dispatch).outputs[1]
    activation = "swiglu" if quant == "mxfp4" else "silu"
    config = t.MoeLayerConfig(E, E // EP, 1, EP, K, H, INTER, activation)
    rank_weights = slice_experts(weights, E // EP, E)
    checked = generated.select(*key, checked=True)(config, rank_weights, kernel=GRAPH_SAFE)
    plain = generated.select(*key)(config, rank_weights, kernel=GRAPH_SAFE)
    eager, replayed = capture_and_replay(lambda: checked(output))
    assert torch.equal(eager.hidden_states, replayed.hidden_states)
    assert torch.equal(eager.hidden_states, plain(output).hidden_states)
    assert torch.count_nonzero(eager.hidden_states) > 0

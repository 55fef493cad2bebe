"""CUDA only: a checked runner (`select(..., checked=True)`) captures in a CUDA graph, replays to
the eager result, and never syncs the host: its value checks are device-side asserts.

A failing device assert poisons the CUDA context, so this file only runs good input; the
failing checks are tested on the CPU (tests/runners/test_checked.py)."""

from __future__ import annotations

import pytest
import torch

import generated
from tests.gpu.graphs import GRAPH_SAFE, STATIC_KEYS, capture_and_replay, rank_one

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@pytest.mark.parametrize("key", STATIC_KEYS, ids="/".join)
def test_checked_runner_replays_to_the_eager_result_without_host_syncs(
    key: tuple[str, str, str],
) -> None:
    config, rank_weights, output = rank_one(key)
    checked = generated.select(*key, checked=True)(config, rank_weights, kernel=GRAPH_SAFE)
    plain = generated.select(*key)(config, rank_weights, kernel=GRAPH_SAFE)
    eager, replayed = capture_and_replay(lambda: checked(output))
    assert torch.equal(eager.hidden_states, replayed.hidden_states)
    assert torch.equal(eager.hidden_states, plain(output).hidden_states)
    assert torch.count_nonzero(eager.hidden_states) > 0

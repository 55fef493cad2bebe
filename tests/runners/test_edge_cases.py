"""Edge cases per format: zero received rows, every id -1, a token routed twice to one rank,
recv_cap below and above MORI's buffer, num_local_tokens below the row count."""

from __future__ import annotations

import pytest
import torch

import generated
from moe_runtime import types as t
from moe_runtime.testing import emulate
from moe_runtime.testing.recording import RecordingKernel
from moe_runtime.testing.weights import make_expert_weights
from tests.runners.harness import (
    HIDDEN,
    INTERMEDIATE,
    NUM_EXPERTS,
    Run,
    each_key,
    keys,
    run_combination,
)

ONE_PER_FORMAT = keys(
    "none/unquant/standard",
    "deepep/fp8_block/deepep_normal",
    "deepep/unquant/deepep_ll",
    "mooncake/fp8_block/deepep_ll_fp8",
    "mori/unquant/mori_normal",
    "mori/fp8_channel/mori_ll",
    "mori/fp8_block/mori_normal_fp8",
    "mori/mxfp4/mori_ll_fp8",
    "mori/quark_w4a4_mxfp4/mori_normal_fp4",
    "mori/unquant/mori_ll_fp4",
)


def crafted_batch(ids: list[list[int]], ep_size: int, seed: int = 3) -> emulate.GlobalBatch:
    generator = torch.Generator().manual_seed(seed)
    topk_ids = torch.tensor(ids, dtype=torch.int32)
    weights = torch.rand(topk_ids.shape, generator=generator) + 0.1
    return emulate.GlobalBatch(
        hidden_states=torch.randn(len(ids), HIDDEN, generator=generator).to(torch.bfloat16),
        topk_ids=topk_ids,
        topk_weights=weights / weights.sum(dim=1, keepdim=True),
        num_experts=NUM_EXPERTS,
        ep_size=ep_size,
    )


def close(key: tuple[str, str, str], run: Run) -> bool:
    return run.mismatch(key[1], key[2]) is None


@pytest.mark.parametrize("key", ONE_PER_FORMAT, ids="/".join)
def test_rank_that_receives_no_rows(key: tuple[str, str, str]) -> None:
    # Experts 0..3 live on rank 0 of 2: rank 1 receives nothing (standard: it sees every row).
    batch = crafted_batch([[0, 1], [2, 3], [1, 0], [3, 2], [0, 2]], ep_size=2)
    run = run_combination(key, 2, batch=batch)
    assert close(key, run)
    rank1 = run.dispatched.outputs[1]
    if key[2] == "deepep_normal":
        assert rank1.hidden_states.shape[0] == 0
    if key[2].startswith("deepep_ll"):
        assert int(rank1.masked_m.sum()) == 0
    if key[2].startswith("mori"):
        assert int(rank1.num_recv_tokens_per_expert) == 0


@pytest.mark.parametrize("key", ONE_PER_FORMAT, ids="/".join)
def test_token_routed_twice_to_one_rank(key: tuple[str, str, str]) -> None:
    # Each token's two experts share a rank: DeepEP and MORI deliver it once, with both ids.
    batch = crafted_batch([[0, 1], [5, 4], [2, 3], [7, 6], [1, 3]], ep_size=2)
    run = run_combination(key, 2, batch=batch)
    assert close(key, run)


@pytest.mark.parametrize("dispatch", ["standard", "deepep_normal", "mori_normal", "mori_ll_fp8"])
def test_zero_rows_skip_the_kernel(dispatch: str) -> None:
    """AITER rejects M == 0: an empty dispatch goes straight back to combine, no kernel call."""
    a2a = {"standard": "none", "deepep_normal": "deepep"}.get(dispatch, "mori")
    key = (a2a, "fp8_block", dispatch)
    empty = crafted_batch([[0, 1]], ep_size=2)
    empty = emulate.GlobalBatch(
        empty.hidden_states[:0], empty.topk_ids[:0], empty.topk_weights[:0], NUM_EXPERTS, 2
    )
    outputs = emulate.dispatch(empty, dispatch, max_tokens_per_rank=0).outputs
    kernel = RecordingKernel()
    config = t.MoeLayerConfig(NUM_EXPERTS, NUM_EXPERTS // 2, 1, 2, 2, HIDDEN, INTERMEDIATE, "silu")
    weights = make_expert_weights("fp8_block", NUM_EXPERTS // 2, HIDDEN, INTERMEDIATE, seed=0)
    combine_input = generated.select(*key)(config, weights, kernel=kernel)(outputs[1])
    assert kernel.calls == []
    assert combine_input.hidden_states.shape[0] == 0


def test_every_id_minus_one_goes_to_the_sink() -> None:
    key = ("deepep", "unquant", "deepep_normal")
    local = NUM_EXPERTS // 2
    config = t.MoeLayerConfig(NUM_EXPERTS, local, 0, 2, 2, HIDDEN, INTERMEDIATE, "silu")
    weights = make_expert_weights("unquant", local, HIDDEN, INTERMEDIATE, seed=0)
    ids = torch.full((4, 2), -1, dtype=torch.int64)
    output = t.DeepEPNormalDispatchOutput(
        torch.randn(4, HIDDEN).to(torch.bfloat16), None, ids, torch.zeros(4, 2), [0] * local
    )
    kernel = RecordingKernel()
    generated.select(*key)(config, weights, kernel=kernel)(output)
    call = kernel.calls[0]
    assert call["topk_ids"].dtype == torch.int32
    assert torch.equal(call["topk_ids"], torch.full((4, 2), local, dtype=torch.int32))
    assert call["expert_mask"].tolist() == [1] * local + [0]

    # With the reference kernel, nothing is computed for sink ids: the output is zero.
    combine_input = generated.select(*key)(config, weights)(output)
    assert torch.count_nonzero(combine_input.hidden_states) == 0
    assert combine_input.topk_ids is ids, "combine gets the original ids"


@pytest.mark.parametrize("dispatch", ["mori_normal", "mori_ll_fp8"])
def test_recv_cap_below_and_above_the_buffer(dispatch: str) -> None:
    """A cap (never below total_recv, as SGLang sets it) needs no slice: the kernel gets MORI's
    whole buffer, num_local_tokens bounds the rows it reads, and combine reads only those."""
    key = ("mori", "unquant", dispatch)
    batch = emulate.make_batch(12, HIDDEN, NUM_EXPERTS, 2, ep_size=2, seed=5)
    plain = emulate.dispatch(batch, dispatch, max_tokens_per_rank=10)
    received = [int(o.num_recv_tokens_per_expert) for o in plain.outputs]
    capacity = plain.outputs[0].hidden_states.shape[0]
    for recv_cap in (max(received), capacity + 7):
        assert 0 < max(received) < capacity
        kernel = RecordingKernel()
        run_combination(
            key, 2, batch=batch, recv_cap=recv_cap, max_tokens_per_rank=10, kernel=kernel
        )
        rows = [call["hidden_states"].shape[0] for call in kernel.calls]
        assert rows == [capacity] * 2
        bounds = [int(call["num_local_tokens"]) for call in kernel.calls]
        assert bounds == received
        run = run_combination(key, 2, batch=batch, recv_cap=recv_cap, max_tokens_per_rank=10)
        assert close(key, run)


def test_num_local_tokens_below_the_row_count() -> None:
    """MORI hands the whole capacity buffer; the kernel is told how many rows are real."""
    key = ("mori", "fp8_block", "mori_normal")
    batch = emulate.make_batch(12, HIDDEN, NUM_EXPERTS, 2, ep_size=2, seed=6)
    kernel = RecordingKernel()
    run = run_combination(key, 2, batch=batch, kernel=kernel)
    for call, output in zip(kernel.calls, run.dispatched.outputs, strict=True):
        assert call["num_local_tokens"] is output.num_recv_tokens_per_expert
        assert int(call["num_local_tokens"]) < call["hidden_states"].shape[0]
        assert call["dtype"] == torch.bfloat16
    assert close(key, run_combination(key, 2, batch=batch))


@each_key(
    "none/mxfp4/standard",
    "deepep/mxfp4/deepep_normal",
    "deepep/mxfp4/deepep_ll",
    "mori/mxfp4/mori_ll_fp4",
    "none/quark_w4a8_mxfp4/standard",
    "mori/quark_w4a8_mxfp4/mori_normal_fp4",
)
def test_padded_hidden_and_intermediate_sizes(key: tuple[str, str, str]) -> None:
    """gpt-oss pads H and I to multiples of 256: activations are padded, the output sliced back."""
    run = run_combination(key, 2, hidden=224, intermediate=96, hidden_pad=32, intermediate_pad=32)
    assert run.combined().shape == (run.batch.num_tokens, 224)
    assert close(key, run)
    assert int(run.combine_inputs[0].hidden_states.shape[-1]) == 224

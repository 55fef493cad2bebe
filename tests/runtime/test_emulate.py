"""The emulated dispatchers reproduce each format's facts (docs/formats.md) and fold back exactly.

Totals: dispatch -> a minimal, format-correct "expert" that scales each routed (token, expert) by a
per-expert factor -> combine must equal the dense sum over every token's top-k, for every format
at EP 1, 2 and 4. The expert reads only public fields of the dispatch outputs, and it also computes
garbage and stale rows, so combine is shown to ignore them. Negative controls show that reading
those rows, dropping a rank or weighting on the wrong side gives a different answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_runtime import types as t
from moe_runtime.formats import deepep_ll_fp8_wire
from moe_runtime.quant import (
    quantize_fp8_1x128,
    quantize_fp8_per_row,
    quantize_mxfp4,
    quantize_mxfp8,
)
from moe_runtime.testing import emulate

HIDDEN = 256
NUM_EXPERTS = 8
TOP_K = 3
EP_SIZES = (1, 2, 4)
MORI_FORMATS = tuple(f for f in emulate.FORMATS if f.startswith("mori"))
LL_FORMATS = ("deepep_ll", "deepep_ll_fp8")
_E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_E2M1 = torch.cat([_E2M1, -_E2M1])


def factor(expert: torch.Tensor) -> torch.Tensor:
    """The per-expert scalar the test experts multiply by: distinct for every expert."""
    return 1.0 + expert.float() / 8.0


def wire_of(format: str) -> str:
    if format == emulate.DEEPEP_LL_FP8:
        return "deepep_fp8"  # DeepEP's own cast (moe_runtime.formats.deepep_ll_fp8_wire)
    for suffix in ("mxfp8", "fp8_token", "fp8", "fp4"):
        if format.endswith(f"_{suffix}"):
            return suffix
    return "bf16"


def decode_fp8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float().repeat_interleave(128, dim=-1)


def decode_fp4(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    byte = packed.view(torch.uint8).long()
    codes = torch.stack((byte & 0xF, byte >> 4), dim=-1).flatten(-2)
    return _E2M1[codes] * scale.float().repeat_interleave(32, dim=-1)


def decode_e8m0_groups(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp8 values times 2**(byte - 127) per 32 elements (the MX fp8 wire)."""
    exponent = scale.view(torch.uint8).long() - 127
    return q.float() * torch.pow(2.0, exponent.float()).repeat_interleave(32, dim=-1)


def decode(hidden: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """What the rows on the wire stand for, in float32."""
    if scale is None:
        return hidden.float()
    if hidden.dtype == torch.float4_e2m1fn_x2:
        return decode_fp4(hidden, scale)
    if scale.dtype == torch.float8_e8m0fnu:
        return decode_e8m0_groups(hidden, scale)
    if scale.shape[-1] == 1:
        return hidden.float() * scale.float()  # one fp32 scale per row
    return decode_fp8(hidden, scale)


def wire_roundtrip(batch: emulate.GlobalBatch, wire: str) -> torch.Tensor:
    """The value of every token after the sender put it on the wire."""
    if wire == "deepep_fp8":
        return decode(*deepep_ll_fp8_wire(batch.hidden_states))
    if wire == "fp8":
        return decode(*quantize_fp8_1x128(batch.hidden_states))
    if wire == "fp4":
        return decode(*quantize_mxfp4(batch.hidden_states))
    if wire == "mxfp8":
        return decode(*quantize_mxfp8(batch.hidden_states))
    if wire == "fp8_token":
        return decode(*quantize_fp8_per_row(batch.hidden_states))
    return batch.hidden_states.float()


def dense_total(batch: emulate.GlobalBatch, wire: str = "bf16") -> torch.Tensor:
    """Sum over each token's routed experts of weight * factor(expert) * token, in float32."""
    ids = batch.topk_ids.long()
    scale = torch.where(ids >= 0, batch.topk_weights * factor(ids), 0.0).sum(dim=1)
    return wire_roundtrip(batch, wire) * scale.unsqueeze(1)


def row_scale(ids: torch.Tensor, weights: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """Per row: sum of weight * factor over the row's global ids in [first, first + count)."""
    ids = ids.long()
    on_rank = (ids >= first) & (ids < first + count)
    return torch.where(on_rank, weights * factor(ids), 0.0).sum(dim=1, keepdim=True)


def expert_work(rank: int, output: Any, num_local: int) -> Any:
    """A minimal correct runner per format; computes garbage and stale rows too."""
    first = rank * num_local
    if isinstance(output, t.StandardDispatchOutput):
        topk = output.topk_output
        scale = row_scale(topk.topk_ids, topk.topk_weights, first, num_local)
        return t.StandardCombineInput(output.hidden_states.float() * scale)
    if isinstance(output, t.DeepEPNormalDispatchOutput):
        local = output.topk_ids
        global_ids = torch.where(local >= 0, local + first, -1)
        scale = row_scale(global_ids, output.topk_weights, first, num_local)
        return t.DeepEPNormalCombineInput(
            output.hidden_states.float() * scale, output.topk_ids, output.topk_weights
        )
    if isinstance(output, t.DeepEPLLDispatchOutput):
        experts = torch.arange(first, first + num_local).view(-1, 1, 1)
        hidden = decode(output.hidden_states, output.hidden_states_scale) * factor(experts)
        return t.DeepEPLLCombineInput(hidden, output.topk_ids, output.topk_weights)
    assert isinstance(output, MoriOutput)
    scale = row_scale(output.topk_ids, output.topk_weights, first, num_local)
    combine_type = (
        t.MoriEPLLCombineInput
        if isinstance(output, t.MoriEPLLDispatchOutput)
        else t.MoriEPNormalCombineInput
    )
    # EPv2's combine also takes MORI's normal combine input (SGLang 0.5.23 moriep.py:1572).
    return combine_type(
        decode(output.hidden_states, output.hidden_states_scale) * scale,
        output.origin_topk_ids,
        output.origin_topk_weights,
    )


def run_all(dispatched: emulate.Dispatched, num_local: int) -> list[Any]:
    return [
        expert_work(rank, output, num_local) for rank, output in enumerate(dispatched.outputs)
    ]


def batch_with_idle_rank(num_tokens: int = 9) -> emulate.GlobalBatch:
    """EP 4 over 8 experts where nothing routes to rank 3 (experts 6, 7), token 0 routes nowhere
    (all -1) and token 1 has one -1 slot."""
    base = emulate.make_batch(num_tokens, HIDDEN, 6, TOP_K, ep_size=1, seed=11)
    ids = base.topk_ids.clone()
    ids[0] = -1
    ids[1, 2] = -1
    return emulate.GlobalBatch(base.hidden_states, ids, base.topk_weights, NUM_EXPERTS, 4)


MoriOutput = t.MoriEPNormalDispatchOutput | t.MoriEPLLDispatchOutput | t.MoriEPV2DispatchOutput


def mori_outputs(dispatched: emulate.Dispatched) -> list[MoriOutput]:
    outputs = list(dispatched.outputs)
    assert all(isinstance(o, MoriOutput) for o in outputs)
    return [o for o in outputs if isinstance(o, MoriOutput)]


def total_recv(output: MoriOutput) -> int:
    return int(output.num_recv_tokens_per_expert)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- totals


@pytest.mark.parametrize("ep_size", EP_SIZES)
@pytest.mark.parametrize("format", emulate.FORMATS)
def test_dispatch_expert_combine_gives_the_dense_total(format: str, ep_size: int) -> None:
    batch = emulate.make_batch(13, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=ep_size, seed=ep_size)
    dispatched = emulate.dispatch(batch, format)
    total = emulate.combine(dispatched, run_all(dispatched, batch.num_local_experts))
    assert total.dtype == torch.float32
    assert close(total, dense_total(batch, wire_of(format)))


@pytest.mark.parametrize("format", emulate.FORMATS)
def test_idle_rank_unrouted_tokens_and_empty_batches(format: str) -> None:
    batch = batch_with_idle_rank()
    dispatched = emulate.dispatch(batch, format, max_tokens_per_rank=4)
    total = emulate.combine(dispatched, run_all(dispatched, batch.num_local_experts))
    assert close(total, dense_total(batch, wire_of(format)))
    assert torch.equal(total[0], torch.zeros(HIDDEN))  # routed nowhere

    empty = emulate.make_batch(0, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=2, seed=0)
    dispatched = emulate.dispatch(empty, format)
    total = emulate.combine(dispatched, run_all(dispatched, empty.num_local_experts))
    assert total.shape == (0, HIDDEN)


@settings(max_examples=12, deadline=None)
@given(
    num_tokens=st.integers(1, 12),
    ep_size=st.sampled_from(EP_SIZES),
    top_k=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    format=st.sampled_from(("standard", "deepep_normal", "deepep_ll", "mori_normal", "mori_ll")),
)
def test_totals_hold_for_random_shapes(
    num_tokens: int, ep_size: int, top_k: int, seed: int, format: str
) -> None:
    batch = emulate.make_batch(num_tokens, 128, NUM_EXPERTS, top_k, ep_size=ep_size, seed=seed)
    dispatched = emulate.dispatch(batch, format)
    total = emulate.combine(dispatched, run_all(dispatched, batch.num_local_experts))
    assert close(total, dense_total(batch))


# --------------------------------------------------------------------------- structure


def test_batch_split_and_routing() -> None:
    batch = emulate.make_batch(10, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=4, seed=3)
    slices = [batch.tokens_slice(r) for r in range(4)]
    assert [(s.start, s.stop) for s in slices] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert batch.topk_ids.dtype == torch.int32 and batch.topk_weights.dtype == torch.float32
    assert all(len(set(row)) == TOP_K for row in batch.topk_ids.tolist())  # distinct experts
    assert bool((batch.topk_weights > 0).all())
    assert torch.allclose(batch.topk_weights.sum(dim=1), torch.ones(10))
    tiny = emulate.make_batch(2, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=4, seed=3)
    assert [tiny.tokens_slice(r) for r in range(4)][2:] == [slice(2, 2), slice(2, 2)]


def test_standard_replicates_the_batch_on_every_rank() -> None:
    batch = emulate.make_batch(5, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=2, seed=1)
    outputs = emulate.dispatch(batch, "standard").outputs
    for output in outputs:
        assert isinstance(output, t.StandardDispatchOutput)
        assert output.hidden_states_scale is None
        assert torch.equal(output.hidden_states, batch.hidden_states)
        assert torch.equal(output.topk_output.topk_ids, batch.topk_ids)
        assert output.topk_output.topk_ids.dtype == torch.int32
        assert torch.equal(output.topk_output.topk_weights, batch.topk_weights)
    assert outputs[0].hidden_states.data_ptr() != outputs[1].hidden_states.data_ptr()


def test_deepep_normal_local_ids_minus_one_and_dedup() -> None:
    batch = batch_with_idle_rank()
    local_count = batch.num_local_experts
    outputs = emulate.dispatch(batch, "deepep_normal").outputs
    for rank, output in enumerate(outputs):
        assert isinstance(output, t.DeepEPNormalDispatchOutput)
        ids = batch.topk_ids.long()
        on_rank = (ids >= 0) & (ids // local_count == rank)
        tokens = on_rank.any(dim=1).nonzero().squeeze(1)  # each token once, in order
        assert torch.equal(output.hidden_states, batch.hidden_states[tokens])
        assert output.topk_ids.dtype == torch.int64
        assert output.topk_weights.dtype == torch.float32
        want_ids = torch.where(on_rank[tokens], ids[tokens] - rank * local_count, -1)
        assert torch.equal(output.topk_ids, want_ids)
        minus_one = output.topk_ids == -1
        assert bool((output.topk_weights[minus_one] == 0.0).all())
        assert torch.equal(
            output.topk_weights[~minus_one], batch.topk_weights[tokens][~minus_one]
        )
        counts = [int((output.topk_ids == e).sum()) for e in range(local_count)]
        assert output.num_recv_tokens_per_expert == counts
    assert outputs[3].hidden_states.shape == (0, HIDDEN)  # the idle rank


@pytest.mark.parametrize("format", LL_FORMATS)
def test_low_latency_slabs_masked_m_and_garbage(format: str) -> None:
    batch = emulate.make_batch(7, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=2, seed=5)
    local_count = batch.num_local_experts
    capacity = 5 * 2
    dispatched = emulate.dispatch(batch, format, max_tokens_per_rank=5)
    wire = wire_roundtrip(batch, wire_of(format))
    for rank, output in enumerate(dispatched.outputs):
        assert isinstance(output, t.DeepEPLLDispatchOutput)
        assert output.hidden_states.shape == (local_count, capacity, HIDDEN)
        sent = batch.tokens_slice(rank)
        assert output.topk_ids.dtype == torch.int64
        assert torch.equal(output.topk_ids, batch.topk_ids[sent].long())  # global, sender side
        assert torch.equal(output.topk_weights, batch.topk_weights[sent])
        assert output.masked_m.dtype == torch.int32 and output.masked_m.shape == (local_count,)
        assert output.expected_m == (
            (sent.stop - sent.start) * 2 * TOP_K + NUM_EXPERTS
        ) // NUM_EXPERTS
        values = decode(output.hidden_states, output.hidden_states_scale)
        for e in range(local_count):
            tokens = (batch.topk_ids == rank * local_count + e).any(dim=1).nonzero().squeeze(1)
            m = int(output.masked_m[e])
            assert m == tokens.numel()
            assert torch.equal(values[e, :m], wire[tokens])  # arrival order: sender, token
            assert bool((values[e, m:].abs() >= 512).all())  # garbage: large, finite
            assert bool(values[e, m:].isfinite().all())
        if format == "deepep_ll_fp8":
            scale = output.hidden_states_scale
            assert scale is not None and scale.dtype == torch.float32
            assert scale.shape == (local_count, capacity, HIDDEN // 128)
            assert scale.stride(1) == 1 and not scale.is_contiguous()  # column-major, like DeepEP
            assert output.hidden_states.dtype == torch.float8_e4m3fn
        else:
            assert output.hidden_states_scale is None
            assert output.hidden_states.dtype == torch.bfloat16


@pytest.mark.parametrize("format", MORI_FORMATS)
def test_mori_capacity_full_routing_and_stale_rows(format: str) -> None:
    batch = batch_with_idle_rank()
    local_count = batch.num_local_experts
    dispatched = emulate.dispatch(batch, format, max_tokens_per_rank=4, recv_cap=7)
    capacity = 4 * 4
    wire = wire_roundtrip(batch, wire_of(format))
    output_type = (
        t.MoriEPV2DispatchOutput
        if format in emulate.MORI_V2_FORMATS
        else t.MoriEPLLDispatchOutput
        if "_ll" in format
        else t.MoriEPNormalDispatchOutput
    )
    for rank, output in enumerate(dispatched.outputs):
        assert type(output) is output_type
        ids = batch.topk_ids.long()
        tokens = ((ids >= 0) & (ids // local_count == rank)).any(dim=1).nonzero().squeeze(1)
        n = tokens.numel()
        recv = output.num_recv_tokens_per_expert
        assert recv.dtype == torch.int32 and recv.tolist() == [n]
        assert output.hidden_states.shape[0] == capacity
        assert output.topk_ids.dtype == torch.int32 and output.topk_ids.shape == (capacity, TOP_K)
        assert torch.equal(output.topk_ids[:n], batch.topk_ids[tokens])  # full routing, -1 kept
        assert torch.equal(output.topk_weights[:n], batch.topk_weights[tokens])
        values = decode(output.hidden_states, output.hidden_states_scale)
        assert torch.equal(values[:n], wire[tokens])
        stale_ids = output.topk_ids[n:]
        assert bool(((stale_ids >= 0) & (stale_ids < NUM_EXPERTS)).all())  # plausible
        assert bool((values[n:].abs() >= 512).all()) and bool(values[n:].isfinite().all())
        sent = batch.tokens_slice(rank)
        assert torch.equal(output.origin_topk_ids, batch.topk_ids[sent])
        assert torch.equal(output.origin_topk_weights, batch.topk_weights[sent])
        assert output.out_dtype == torch.bfloat16 and output.recv_cap == 7
    outputs = mori_outputs(dispatched)
    assert total_recv(outputs[3]) == 0
    # Some stale rows route to the receiving rank's own experts: an unmasked runner computes them.
    stale = outputs[0].topk_ids[total_recv(outputs[0]) :]
    assert bool((stale < local_count).any())


def test_wire_dtypes_and_scales() -> None:
    batch = emulate.make_batch(4, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=2, seed=2)
    fp8 = emulate.dispatch(batch, "mori_normal_fp8").outputs[0]
    assert fp8.hidden_states.dtype == torch.float8_e4m3fn
    assert fp8.hidden_states_scale is not None
    assert fp8.hidden_states_scale.dtype == torch.float32
    assert fp8.hidden_states_scale.shape == (4, HIDDEN // 128)
    fp4 = emulate.dispatch(batch, "mori_ll_fp4").outputs[0]
    assert fp4.hidden_states.dtype == torch.float4_e2m1fn_x2
    assert fp4.hidden_states.shape == (4, HIDDEN // 2)
    assert fp4.hidden_states_scale is not None
    assert fp4.hidden_states_scale.dtype == torch.float8_e8m0fnu
    assert fp4.hidden_states_scale.shape == (4, HIDDEN // 32)
    assert emulate.dispatch(batch, "mori_ll").outputs[0].hidden_states_scale is None
    mxfp8 = emulate.dispatch(batch, "mori_ll_mxfp8").outputs[0]
    assert mxfp8.hidden_states.dtype == torch.float8_e4m3fn
    assert mxfp8.hidden_states.shape == (4, HIDDEN)
    assert mxfp8.hidden_states_scale is not None
    assert mxfp8.hidden_states_scale.dtype == torch.float8_e8m0fnu
    assert mxfp8.hidden_states_scale.shape == (4, HIDDEN // 32)
    per_token = emulate.dispatch(batch, "mori_normal_fp8_token").outputs[0]
    assert per_token.hidden_states.dtype == torch.float8_e4m3fn
    assert per_token.hidden_states_scale is not None
    assert per_token.hidden_states_scale.dtype == torch.float32
    assert per_token.hidden_states_scale.shape == (4, 1)


@pytest.mark.parametrize(
    ("format", "dtype", "group"),
    [
        ("mori_v2_fp8", torch.float32, 128),
        ("mori_v2_fp4", torch.float8_e8m0fnu, 32),
        ("mori_v2_mxfp8", torch.float8_e8m0fnu, 32),
    ],
)
def test_mori_v2_scales_are_strided_views_and_expert_output_is_stale(
    format: str, dtype: torch.dtype, group: int
) -> None:
    batch = emulate.make_batch(4, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=2, seed=2)
    v1 = emulate.dispatch(batch, format.replace("_v2", "_normal")).outputs[0]
    v2 = emulate.dispatch(batch, format).outputs[0]
    assert isinstance(v2, t.MoriEPV2DispatchOutput)
    scale = v2.hidden_states_scale
    assert scale is not None and scale.dtype == dtype and scale.shape == (4, HIDDEN // group)
    assert not scale.is_contiguous() and scale.stride(0) > scale.shape[1]  # rows are wider
    assert v1.hidden_states_scale is not None
    assert torch.equal(scale.view(torch.uint8), v1.hidden_states_scale.view(torch.uint8))
    same = decode(v1.hidden_states, v1.hidden_states_scale)
    assert torch.equal(decode(v2.hidden_states, scale), same)
    out = v2.expert_output
    assert out is not None and out.shape == (4, HIDDEN) and out.dtype == torch.bfloat16
    assert bool((out.float().abs() >= 512).all())  # stale until a runner writes it
    assert emulate.dispatch(batch, "mori_v2").outputs[0].hidden_states_scale is None


# --------------------------------------------------------------------------- recv_cap


def test_recv_cap_limits_the_rows_mori_combine_reads() -> None:
    batch = emulate.make_batch(8, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=2, seed=4)
    local_count = batch.num_local_experts
    uncapped = emulate.dispatch(batch, "mori_normal")
    recv = [total_recv(o) for o in mori_outputs(uncapped)]
    cap = min(recv) - 2
    dispatched = emulate.dispatch(batch, "mori_normal", recv_cap=cap)
    # A runner that truncates to the cap hands back only `cap` rows: combine takes that.
    inputs = [
        ci._replace(hidden_states=ci.hidden_states[:cap])
        for ci in run_all(dispatched, local_count)
    ]
    total = emulate.combine(dispatched, inputs)
    want = torch.zeros(8, HIDDEN)
    for rank in range(2):
        ids = batch.topk_ids.long()
        tokens = ((ids >= 0) & (ids // local_count == rank)).any(dim=1).nonzero().squeeze(1)
        kept = tokens[:cap]
        scale = row_scale(
            batch.topk_ids[kept], batch.topk_weights[kept], rank * local_count, local_count
        )
        want[kept] += batch.hidden_states[kept].float() * scale
    assert close(total, want)
    assert not close(total, dense_total(batch))  # the cap dropped contributions
    # A cap at or above the capacity (or 0) is no cap.
    for no_cap in (0, 2 * 4, 100):
        loose = emulate.dispatch(batch, "mori_normal", recv_cap=no_cap)
        assert close(emulate.combine(loose, run_all(loose, local_count)), dense_total(batch))


# --------------------------------------------------------------------------- negative controls


def leaky(dispatched: emulate.Dispatched, inputs: list[Any]) -> torch.Tensor:
    """A combine that also reads the rows no real combine reads (slab rows past masked_m, MORI
    rows past total_recv), adding them to token 0."""
    total = emulate.combine(dispatched, inputs).clone()
    for output, combine_input in zip(dispatched.outputs, inputs, strict=True):
        if isinstance(output, t.DeepEPLLDispatchOutput):
            for e, m in enumerate(output.masked_m.tolist()):
                total[0] += combine_input.hidden_states[e, m:].float().sum(dim=0)
        else:
            assert isinstance(output, MoriOutput)
            total[0] += combine_input.hidden_states[total_recv(output) :].float().sum(dim=0)
    return total


@pytest.mark.parametrize("format", LL_FORMATS + MORI_FORMATS)
def test_reading_garbage_or_stale_rows_is_detected(format: str) -> None:
    batch = emulate.make_batch(6, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=2, seed=8)
    dispatched = emulate.dispatch(batch, format, max_tokens_per_rank=6)
    inputs = run_all(dispatched, batch.num_local_experts)
    expected = dense_total(batch, wire_of(format))
    assert close(emulate.combine(dispatched, inputs), expected)
    assert not close(leaky(dispatched, inputs), expected)


@pytest.mark.parametrize("format", emulate.FORMATS)
def test_dropping_a_rank_is_detected(format: str) -> None:
    batch = emulate.make_batch(9, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=4, seed=9)
    dispatched = emulate.dispatch(batch, format)
    inputs = run_all(dispatched, batch.num_local_experts)
    inputs[2] = inputs[2]._replace(hidden_states=torch.zeros_like(inputs[2].hidden_states))
    assert not close(emulate.combine(dispatched, inputs), dense_total(batch, wire_of(format)))


def _weight_on_expert_side(dispatched: emulate.Dispatched, inputs: list[Any]) -> list[Any]:
    """A low-latency runner that wrongly applies some weight itself (combine weights again)."""
    return [ci._replace(hidden_states=ci.hidden_states * 0.5) for ci in inputs]


def _local_ids_taken_as_global(dispatched: emulate.Dispatched, inputs: list[Any]) -> list[Any]:
    """A DeepEP-normal runner that forgets the ids are local (rank r owns [r*L, (r+1)*L))."""
    wrong = []
    for rank, (output, ci) in enumerate(zip(dispatched.outputs, inputs, strict=True)):
        assert isinstance(output, t.DeepEPNormalDispatchOutput)
        scale = row_scale(output.topk_ids, output.topk_weights, 2 * rank, 2)
        wrong.append(ci._replace(hidden_states=output.hidden_states.float() * scale))
    return wrong


@pytest.mark.parametrize(
    ("format", "mistake"),
    [("deepep_ll", _weight_on_expert_side), ("deepep_normal", _local_ids_taken_as_global)],
)
def test_format_mistakes_are_detected(
    format: str, mistake: Callable[[emulate.Dispatched, list[Any]], list[Any]]
) -> None:
    batch = emulate.make_batch(9, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=4, seed=10)
    dispatched = emulate.dispatch(batch, format)
    inputs = mistake(dispatched, run_all(dispatched, batch.num_local_experts))
    assert not close(emulate.combine(dispatched, inputs), dense_total(batch))


# --------------------------------------------------------------------------- errors


def test_invalid_arguments_are_refused_with_clear_messages() -> None:
    batch = emulate.make_batch(8, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=2, seed=1)
    with pytest.raises(ValueError, match="unknown dispatch format 'deepep'"):
        emulate.dispatch(batch, "deepep")
    with pytest.raises(ValueError, match="max_tokens_per_rank=3 is below the 4 tokens"):
        emulate.dispatch(batch, "mori_normal", max_tokens_per_rank=3)
    with pytest.raises(ValueError, match="recv_cap must be >= 0"):
        emulate.dispatch(batch, "mori_normal", recv_cap=-1)
    with pytest.raises(ValueError, match="multiple of 128"):
        emulate.dispatch(
            emulate.make_batch(4, 96, NUM_EXPERTS, TOP_K, ep_size=2, seed=1), "mori_normal_fp8"
        )
    with pytest.raises(ValueError, match="positive multiple of ep_size"):
        emulate.make_batch(4, HIDDEN, 6, TOP_K, ep_size=4, seed=1)
    with pytest.raises(ValueError, match="topk_ids must be int32"):
        emulate.GlobalBatch(
            batch.hidden_states, batch.topk_ids.long(), batch.topk_weights, NUM_EXPERTS, 2
        )

    dispatched = emulate.dispatch(batch, "mori_normal")
    inputs = run_all(dispatched, batch.num_local_experts)
    with pytest.raises(ValueError, match="one combine input per rank"):
        emulate.combine(dispatched, inputs[:1])
    with pytest.raises(TypeError, match="combines MoriEPNormalCombineInput"):
        emulate.combine(dispatched, [t.StandardCombineInput(ci.hidden_states) for ci in inputs])
    with pytest.raises(ValueError, match="combine reads"):
        emulate.combine(
            dispatched, [ci._replace(hidden_states=ci.hidden_states[:1]) for ci in inputs]
        )

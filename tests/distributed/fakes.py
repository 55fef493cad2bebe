"""Fakes of DeepEP v1.2.1, Mooncake EP, NIXL EP and MORI with their sources' exact signatures
(see each adapter's docstring), returning what those libraries return: built from the emulation
of one global batch, one fake object per rank.

The raw layouts reproduced: DeepEP normal's int64 local ids with -1 (weight 0), its `list[int]`
counts and `num_worst_tokens` padding (N = num_worst_tokens, padding rows -1, empty list); the
low-latency 5-tuple with fp8 scales allocated `[L, H/128, C]` and transposed (column-major), or
UE8M0 scales packed four to an int32 `[L, C, H/512]`; MORI's buffers with int32 ids and an int32
`[1]` total_recv. Combine calls check that the adapter hands over the combine input of its rank
(`stage` it first) and return the emulated combine of the sender's rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from moe_runtime import types as t
from moe_runtime.quant import FP8
from moe_runtime.testing import emulate

_POISON = 1024.0


class FakeEvent:
    """DeepEP's EventOverlap, as far as a synchronous caller sees it."""

    def current_stream_wait(self) -> None:
        pass


@dataclass
class FakeWorld:
    """All ranks' dispatch, combine inputs staged by the test, and the calls each fake saw."""

    batch: emulate.GlobalBatch
    format: str
    max_tokens_per_rank: int | None = None
    dispatched: emulate.Dispatched = field(init=False)
    staged: dict[int, Any] = field(default_factory=dict)
    calls: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dispatched = emulate.dispatch(
            self.batch, self.format, max_tokens_per_rank=self.max_tokens_per_rank
        )

    def stage(self, rank: int, combine_input: Any) -> None:
        self.staged[rank] = combine_input

    def combined(self, rank: int, x: torch.Tensor) -> torch.Tensor:
        if set(self.staged) != set(range(self.batch.ep_size)):
            raise AssertionError("stage every rank's combine input before combining")
        if x is not self.staged[rank].hidden_states:
            raise AssertionError(f"rank {rank}: combine got another tensor than its expert output")
        staged = [self.staged[r] for r in sorted(self.staged)]
        if self.format == emulate.DEEPEP_NORMAL:
            # num_worst_tokens padding rows: DeepEP's handle knows the real rows and skips them.
            staged = [
                ci._replace(hidden_states=ci.hidden_states[: out.hidden_states.shape[0]])
                for ci, out in zip(staged, self.dispatched.outputs, strict=True)
            ]
        total = emulate.combine(self.dispatched, staged)
        return total[self.batch.tokens_slice(rank)].bfloat16()

    def sent(self, rank: int) -> slice:
        return self.batch.tokens_slice(rank)


def _check_sent(world: FakeWorld, rank: int, x: torch.Tensor, topk_idx: torch.Tensor) -> None:
    rows = world.sent(rank)
    if not torch.equal(topk_idx, world.batch.topk_ids[rows].long()):
        raise AssertionError(f"rank {rank}: topk_idx is not this rank's int64 routing")
    if x.dtype != torch.bfloat16 or not torch.equal(x, world.batch.hidden_states[rows]):
        raise AssertionError(f"rank {rank}: x is not this rank's bf16 tokens")


def _check_weights(world: FakeWorld, rank: int, topk_weights: torch.Tensor | None) -> None:
    """The libraries carry or reduce with the weights they are given: only this rank's own
    router weights give the layer's result (the world's outputs were made from those)."""
    mine = world.batch.topk_weights[world.sent(rank)]
    if topk_weights is None or not torch.equal(topk_weights, mine):
        raise AssertionError(f"rank {rank}: topk_weights are not this rank's router weights")


class _OneRank:
    """One rank's object of a dispatcher library, over the shared world."""

    def __init__(self, world: FakeWorld, rank: int) -> None:
        self.world, self.rank = world, rank


class FakeDeepEPBuffer(_OneRank):
    """`deep_ep.Buffer` of one rank (normal and low-latency methods)."""

    def get_dispatch_layout(
        self,
        topk_idx: torch.Tensor,
        num_experts: int,
        previous_event: Any = None,
        async_finish: bool = False,
        allocate_on_comm_stream: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, FakeEvent]:
        if topk_idx.dtype != torch.int64:
            raise AssertionError("get_dispatch_layout: topk_idx must be int64")
        world = self.world.batch.ep_size
        local = num_experts // world
        rank_of = torch.where(topk_idx >= 0, topk_idx // local, world)
        in_rank = torch.zeros(topk_idx.shape[0], world + 1, dtype=torch.bool)
        in_rank.scatter_(1, rank_of, True)
        per_expert = torch.bincount(topk_idx[topk_idx >= 0], minlength=num_experts).int()
        per_rank, in_world = in_rank[:, :world].sum(0).int(), in_rank[:, :world]
        # Kept so that dispatch can refuse a layout that is not this one, or one passed under
        # another keyword's name (DeepEP's kernels would read the wrong tensor's memory).
        self._layout = (per_rank, None, per_expert, in_world)
        return (*self._layout, FakeEvent())

    def dispatch(
        self,
        x: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        handle: tuple[Any, ...] | None = None,
        num_tokens_per_rank: torch.Tensor | None = None,
        num_tokens_per_rdma_rank: torch.Tensor | None = None,
        is_token_in_rank: torch.Tensor | None = None,
        num_tokens_per_expert: torch.Tensor | None = None,
        topk_idx: torch.Tensor | None = None,
        topk_weights: torch.Tensor | None = None,
        expert_alignment: int = 1,
        num_worst_tokens: int = 0,
        config: Any = None,
        previous_event: Any = None,
        async_finish: bool = False,
        allocate_on_comm_stream: bool = False,
    ) -> tuple[Any, ...]:
        assert isinstance(x, torch.Tensor) and topk_idx is not None
        _check_sent(self.world, self.rank, x, topk_idx)
        _check_weights(self.world, self.rank, topk_weights)
        # In get_dispatch_layout's order, which the layout keywords follow.
        given = (
            num_tokens_per_rank,
            num_tokens_per_rdma_rank,
            num_tokens_per_expert,
            is_token_in_rank,
        )
        layout = getattr(self, "_layout", ())
        if len(layout) != len(given) or any(g is not k for g, k in zip(given, layout, strict=True)):
            raise AssertionError("dispatch needs the layout of get_dispatch_layout, by its names")
        self.world.calls.append(("dispatch", self.rank, {"num_worst_tokens": num_worst_tokens}))
        out = self.world.dispatched.outputs[self.rank]
        assert isinstance(out, t.DeepEPNormalDispatchOutput)
        recv_x, ids, weights = out.hidden_states, out.topk_ids, out.topk_weights
        counts: list[int] = [
            -(-n // expert_alignment) * expert_alignment for n in out.num_recv_tokens_per_expert
        ]
        if num_worst_tokens:
            pad = num_worst_tokens - recv_x.shape[0]
            recv_x = torch.cat([recv_x, torch.full((pad, recv_x.shape[1]), _POISON).bfloat16()])
            ids = torch.cat([ids, torch.full((pad, ids.shape[1]), -1, dtype=torch.int64)])
            weights = torch.cat([weights, torch.zeros(pad, weights.shape[1])])
            counts = []
        handle_out = ("deepep-normal-handle", self.rank)
        return recv_x, ids, weights, counts, handle_out, FakeEvent()

    def combine(
        self,
        x: torch.Tensor,
        handle: tuple[Any, ...],
        topk_weights: torch.Tensor | None = None,
        bias: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        config: Any = None,
        previous_event: Any = None,
        async_finish: bool = False,
        allocate_on_comm_stream: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, FakeEvent]:
        if handle != ("deepep-normal-handle", self.rank):
            raise AssertionError("combine got another handle than dispatch returned")
        return self.world.combined(self.rank, x), None, FakeEvent()

    def low_latency_dispatch(
        self,
        x: torch.Tensor,
        topk_idx: torch.Tensor,
        num_max_dispatch_tokens_per_rank: int,
        num_experts: int,
        cumulative_local_expert_recv_stats: torch.Tensor | None = None,
        dispatch_wait_recv_cost_stats: torch.Tensor | None = None,
        use_fp8: bool = True,
        round_scale: bool = False,
        use_ue8m0: bool = False,
        async_finish: bool = False,
        return_recv_hook: bool = False,
    ) -> tuple[Any, ...]:
        return _low_latency(
            self.world, self.rank, x, topk_idx, num_max_dispatch_tokens_per_rank, use_fp8, use_ue8m0
        )

    def low_latency_combine(
        self,
        x: torch.Tensor,
        topk_idx: torch.Tensor,
        topk_weights: torch.Tensor,
        handle: tuple[Any, ...],
        use_logfmt: bool = False,
        zero_copy: bool = False,
        async_finish: bool = False,
        return_recv_hook: bool = False,
        out: torch.Tensor | None = None,
        combine_wait_recv_cost_stats: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, FakeEvent, Any]:
        return _ll_combine(self.world, self.rank, x, topk_idx, topk_weights, handle)


def _low_latency(
    world: FakeWorld,
    rank: int,
    x: torch.Tensor,
    topk_idx: torch.Tensor,
    max_tokens: int,
    use_fp8: bool,
    use_ue8m0: bool,
) -> tuple[Any, ...]:
    _check_sent(world, rank, x, topk_idx)
    if world.max_tokens_per_rank != max_tokens:
        raise AssertionError("num_max_dispatch_tokens_per_rank differs from the world's")
    world.calls.append(("ll_dispatch", rank, {"use_fp8": use_fp8, "use_ue8m0": use_ue8m0}))
    out = world.dispatched.outputs[rank]
    assert isinstance(out, t.DeepEPLLDispatchOutput)
    handle = ("ll-handle", rank)
    if not use_fp8:
        if out.hidden_states.dtype != torch.bfloat16:
            raise AssertionError("the world dispatched fp8; ask for use_fp8=True")
        return out.hidden_states, out.masked_m, handle, FakeEvent(), None
    assert out.hidden_states_scale is not None
    scale = out.hidden_states_scale
    if use_ue8m0:
        # Power-of-two scales: requantize every slot's values with the exponent rounded up.
        values = out.hidden_states.float() * scale.repeat_interleave(128, dim=-1)
        groups = values.unflatten(-1, (-1, 128))
        amax = groups.abs().amax(-1).clamp(min=1e-30)
        exponent = torch.ceil(torch.log2(amax / 448.0)).clamp(-127, 127)
        pow2 = torch.pow(2.0, exponent)
        fp8 = (groups / pow2.unsqueeze(-1)).clamp(-448, 448).flatten(-2).to(FP8)
        codes = (exponent + 127).to(torch.uint8)  # [L, C, H/128]
        slabs, capacity, groups_n = codes.shape
        packed = torch.empty(slabs, groups_n // 4, capacity, dtype=torch.int32).transpose(1, 2)
        packed.copy_(codes.contiguous().view(torch.int32))
        return (fp8, packed), out.masked_m, handle, FakeEvent(), None
    # DeepEP allocates [L, H/128, C] and returns its transpose.
    column_major = torch.empty(scale.shape[0], scale.shape[2], scale.shape[1]).transpose(1, 2)
    column_major.copy_(scale)
    return (out.hidden_states, column_major), out.masked_m, handle, FakeEvent(), None


def _ll_combine(
    world: FakeWorld,
    rank: int,
    x: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_weights: torch.Tensor,
    handle: tuple[Any, ...],
) -> tuple[torch.Tensor, FakeEvent, Any]:
    if handle != ("ll-handle", rank):
        raise AssertionError("combine got another handle than dispatch returned")
    if topk_idx.dtype != torch.int64 or not torch.equal(
        topk_idx, world.batch.topk_ids[world.sent(rank)].long()
    ):
        raise AssertionError("combine needs this rank's int64 routing")
    _check_weights(world, rank, topk_weights)
    return world.combined(rank, x), FakeEvent(), None


class FakeMooncakeBuffer(_OneRank):
    """`mooncake.mooncake_ep_buffer.Buffer` of one rank."""

    def combine(
        self,
        x: torch.Tensor,
        topk_idx: torch.Tensor,
        topk_weights: torch.Tensor,
        active_ranks: torch.Tensor,
        timeout_us: int,
        handle: tuple[Any, ...],
        zero_copy: bool = False,
        async_finish: bool = False,
        return_recv_hook: bool = False,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, FakeEvent, Any]:
        return _ll_combine(self.world, self.rank, x, topk_idx, topk_weights, handle)

    def dispatch(
        self,
        x: torch.Tensor,
        topk_idx: torch.Tensor,
        active_ranks: torch.Tensor,
        num_max_dispatch_tokens_per_rank: int,
        num_experts: int,
        timeout_us: int,
        use_fp8: bool = True,
        async_finish: bool = False,
        return_recv_hook: bool = False,
    ) -> tuple[Any, ...]:
        if active_ranks.dtype != torch.int32:
            raise AssertionError("active_ranks is an int32 mask")
        return _low_latency(
            self.world, self.rank, x, topk_idx, num_max_dispatch_tokens_per_rank, use_fp8, False
        )


class FakeNixlBuffer(_OneRank):
    """`nixl_ep.Buffer` of one rank: DeepEP's low-latency calls under NIXL's names (NIXL EP is
    DeepEP's low-latency API), so the fake is DeepEP's."""

    dispatch = FakeDeepEPBuffer.low_latency_dispatch
    combine = FakeDeepEPBuffer.low_latency_combine


class FakeMoriOp(_OneRank):
    """`mori.ops.EpDispatchCombineOp` of one rank."""

    def __init__(self, world: FakeWorld, rank: int, max_num_inp_token_per_rank: int) -> None:
        super().__init__(world, rank)
        self.max_num_inp_token_per_rank = max_num_inp_token_per_rank

    def dispatch(
        self,
        input: torch.Tensor,
        weights: torch.Tensor,
        scales: torch.Tensor | None,
        indices: torch.Tensor,
        block_num: int = -1,
        rdma_block_num: int = -1,
        warp_per_block: int = -1,
        call_local_expert_count: bool = False,
        *,
        routing: Any = None,
        return_routing: bool = False,
    ) -> tuple[Any, ...]:
        rows = self.world.sent(self.rank)
        if indices.dtype != torch.int32 or not torch.equal(
            indices, self.world.batch.topk_ids[rows]
        ):
            raise AssertionError("dispatch needs this rank's int32 routing")
        _check_weights(self.world, self.rank, weights)
        if input.shape[0] != rows.stop - rows.start:
            raise AssertionError("dispatch needs one wire row per token this rank sends")
        if input.dtype == torch.bfloat16 and not torch.equal(
            input, self.world.batch.hidden_states[rows]
        ):
            raise AssertionError("a bf16 wire carries this rank's tokens as they are")
        out = self.world.dispatched.outputs[self.rank]
        assert isinstance(out, t.MoriEPNormalDispatchOutput | t.MoriEPLLDispatchOutput)
        if input.dtype != out.hidden_states.dtype or (scales is None) != (
            out.hidden_states_scale is None
        ):
            raise AssertionError(f"wire {input.dtype} does not match the world's format")
        self.world.calls.append(("mori_dispatch", self.rank, {"wire": input.dtype}))
        return (
            out.hidden_states,
            out.topk_weights,
            out.hidden_states_scale,
            out.topk_ids,
            out.num_recv_tokens_per_expert,
        )

    def combine(
        self,
        input: torch.Tensor,
        weights: torch.Tensor,
        indices: torch.Tensor,
        block_num: int = -1,
        rdma_block_num: int = -1,
        warp_per_block: int = -1,
        use_external_inp_buf: int = -1,
        call_reset: bool = False,
        *,
        routing: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not torch.equal(indices, self.world.batch.topk_ids[self.world.sent(self.rank)]):
            raise AssertionError("combine takes this rank's own routing, as handed to dispatch")
        _check_weights(self.world, self.rank, weights)
        rows = self.world.combined(self.rank, input)
        # MORI's output buffer holds max_num_inp_token_per_rank rows; those past T are stale.
        out = torch.full((self.max_num_inp_token_per_rank, rows.shape[1]), _POISON).bfloat16()
        out[: rows.shape[0]] = rows
        return out, weights

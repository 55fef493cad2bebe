"""Dispatch across real processes: every format's per-rank dispatch output, over torch.distributed.

Each rank calls `dispatch` with its own tokens (`hidden_states [T_r, H]`, int32 global
`topk_ids [T_r, K]`, fp32 `topk_weights`) and receives exactly what
`moe_runtime.testing.emulate.dispatch` builds for that rank from the batch of all ranks' tokens in
rank order (same values, dtypes, shapes, strides of the column-major LL scales, and the same poison
in the rows a real dispatcher leaves undefined), so a runner cannot tell the two apart and the tests
compare them bit for bit.

Two collectives per dispatch: a routing header that every rank sends to every rank (sizes, the
per-destination token counts and the per-expert pair counts, plus a flag for invalid input so
that every rank raises together instead of leaving its peers blocked), then one `all_to_all_single`
of the packed rows (`wire.exchange`). Arrival order is sender rank, then token (then top-k slot
for the low-latency slabs), as in the emulation. The returned `DispatchHandle` is what
`moe_runtime.distributed.combiner.combine` needs to send the expert outputs back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from moe_runtime import stale
from moe_runtime.checks import recv_cap_rows
from moe_runtime.distributed import poison, wire
from moe_runtime.formats import (
    DEEPEP_LL_FORMATS,
    DEEPEP_LL_FP8,
    DEEPEP_NORMAL,
    FORMATS,
    MORI_SENDERS,
    MORI_WIRES,
    STANDARD,
    deepep_ll_expected_m,
    deepep_ll_fp8_wire,
    routing_problems,
    wire_group,
)
from moe_runtime.types import (
    DeepEPLLDispatchOutput,
    DeepEPNormalDispatchOutput,
    DispatchOutput,
    StandardDispatchOutput,
    TopKOutput,
)

# Activation dtypes a dispatcher accepts, by header code (every rank must send the same one).
_HIDDEN_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# Header: flag, T_r, K, E, H, dtype code, max_tokens_per_rank (-1: unset), recv_cap, format code,
# then tokens to each rank [N], then (token, k) pairs to each expert [E].
_FIXED = 9


class DispatchError(ValueError):
    """Invalid dispatch input on some rank; raised on every rank of the group alike."""


@dataclass(frozen=True)
class DispatchHandle:
    """What the combine of one dispatch needs on this rank (see `combine.combine`)."""

    format: str
    group: dist.ProcessGroup | None
    rank: int
    world: int
    num_tokens: int  # T_r: rows this rank sent and gets back combined
    hidden_size: int
    # Rows this rank sent to each rank, and the local token of each (rank-major order).
    send_rows: tuple[int, ...]
    send_tokens: torch.Tensor
    # Rows this rank received from each rank (rank-major order).
    recv_rows: tuple[int, ...]
    # Rows each destination sends back in combine (MORI reads at most recv_cap rows), per rank:
    # `back_rows[d]` arrive from rank d, `return_rows[s]` go back to rank s.
    back_rows: tuple[int, ...]
    return_rows: tuple[int, ...]
    # Low latency: top-k slot of each sent pair, and (local expert, slab slot) of each received one.
    send_k: torch.Tensor | None = None
    recv_experts: torch.Tensor | None = None
    recv_slots: torch.Tensor | None = None
    # Low latency: the sender's ids, which the combine input must carry unchanged.
    topk_ids: torch.Tensor | None = None


@dataclass(frozen=True)
class SendPlan:
    """Which local rows go to which rank: `tokens` (and `ks` for LL pairs) in rank-major order."""

    rows: tuple[int, ...]
    tokens: torch.Tensor
    ks: torch.Tensor | None  # LL: top-k slot of each pair
    experts: torch.Tensor | None  # LL: global expert of each pair


@dataclass(frozen=True)
class _Call:
    """One rank's dispatch past the agreement check: what each format's builder reads."""

    format: str
    hidden: torch.Tensor
    ids: torch.Tensor
    weights: torch.Tensor
    plan: SendPlan
    recv_rows: tuple[int, ...]  # rows arriving from each rank
    table: list[list[int]]  # every rank's header, rank order
    num_experts: int
    max_tokens_per_rank: int
    recv_cap: int
    rank: int
    world: int
    group: dist.ProcessGroup | None


def dispatch(
    format: str,
    hidden_states: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    num_experts: int,
    max_tokens_per_rank: int | None = None,
    recv_cap: int = 0,
    group: dist.ProcessGroup | None = None,
) -> tuple[DispatchOutput, DispatchHandle]:
    """This rank's dispatch output of `format`, and the handle its combine needs.

    A collective: every rank of `group` calls it with the same format, `num_experts`,
    `max_tokens_per_rank` and `recv_cap`. `max_tokens_per_rank` sizes the low-latency slabs and
    the MORI capacity as in `emulate.dispatch` (default: the most tokens any rank sends).
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    problems = _local_problems(format, hidden_states, topk_ids, topk_weights, num_experts, world)
    ok = not problems
    plan = _send_plan(format, topk_ids, num_experts, world) if ok else None
    header = _header(
        ok, format, hidden_states, topk_ids, num_experts, world, max_tokens_per_rank, recv_cap, plan
    )
    table = wire.gather_rows(header, group).cpu().tolist()
    _check_agreement(table, rank, problems)
    assert plan is not None  # every rank is valid past the agreement check
    most_sent = max(row[1] for row in table)
    if max_tokens_per_rank is None:
        max_tokens_per_rank = most_sent
    recv_rows = tuple(row[_FIXED + rank] for row in table)
    call = _Call(
        format, hidden_states, topk_ids, topk_weights, plan, recv_rows, table, num_experts,
        max_tokens_per_rank, recv_cap, rank, world, group,
    )
    if format == STANDARD:
        return _standard(call)
    if format == DEEPEP_NORMAL:
        return _deepep_normal(call)
    if format in DEEPEP_LL_FORMATS:
        return _deepep_ll(call)
    return _mori(call)


def _local_problems(
    format: str,
    hidden: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    num_experts: int,
    world: int,
) -> list[str]:
    problems = []
    if format not in FORMATS:
        problems.append(f"unknown dispatch format {format!r}; valid: {', '.join(FORMATS)}")
    if hidden.dtype not in _HIDDEN_DTYPES:
        problems.append(f"hidden_states must be bf16, fp16 or fp32, got {hidden.dtype}")
    problems += routing_problems(hidden, ids, weights, num_experts, world)
    if problems:
        return problems
    group = wire_group(format)
    if group and hidden.shape[1] % group:
        problems.append(f"{format} quantizes per {group} columns; H = {hidden.shape[1]} is not")
    return problems


def _send_plan(format: str, ids: torch.Tensor, num_experts: int, world: int) -> SendPlan:
    """Rows for each destination: tokens (normal, MORI), all tokens (standard), pairs (LL)."""
    local_count = num_experts // world
    device = ids.device
    if format == STANDARD:
        tokens = torch.arange(ids.shape[0], device=device).repeat(world)
        return SendPlan(tuple([ids.shape[0]] * world), tokens, None, None)
    wide = ids.long()
    rank_of = torch.where(wide >= 0, wide // local_count, world)
    if format in DEEPEP_LL_FORMATS:
        # Pairs (token, k), destination-major, token-major within a destination.
        flat = rank_of.flatten()
        order = torch.argsort(flat, stable=True)
        routed = order[flat[order] < world]
        counts = torch.bincount(flat[routed], minlength=world)
        top_k = ids.shape[1]
        return SendPlan(
            tuple(int(n) for n in counts.tolist()),
            routed // top_k,
            routed % top_k,
            wide.flatten()[routed],
        )
    reaches = torch.zeros(ids.shape[0], world + 1, dtype=torch.bool, device=device)
    reaches.scatter_(1, rank_of, True)
    per_rank = [reaches[:, d].nonzero().squeeze(1) for d in range(world)]
    rows = tuple(int(t.numel()) for t in per_rank)
    return SendPlan(rows, torch.cat(per_rank), None, None)


def _header(
    ok: bool,
    format: str,
    hidden: torch.Tensor,
    ids: torch.Tensor,
    num_experts: int,
    world: int,
    max_tokens_per_rank: int | None,
    recv_cap: int,
    plan: SendPlan | None,
) -> torch.Tensor:
    header = torch.zeros(_FIXED + world + max(num_experts, 0), dtype=torch.int64)
    if ok and plan is not None:
        dtype_code = _HIDDEN_DTYPES.index(hidden.dtype)
        fixed = [
            0,
            ids.shape[0],
            ids.shape[1],
            num_experts,
            hidden.shape[1],
            dtype_code,
            -1 if max_tokens_per_rank is None else max_tokens_per_rank,
            recv_cap,
            FORMATS.index(format),
        ]
        header[:_FIXED] = torch.tensor(fixed)
        header[_FIXED : _FIXED + world] = torch.tensor(plan.rows)
        experts = plan.experts
        if experts is not None:
            header[_FIXED + world :] = torch.bincount(experts.cpu(), minlength=num_experts)
    else:
        header[0] = 1
    return header.to(ids.device)


def _check_agreement(table: list[list[int]], rank: int, problems: list[str]) -> None:
    """Raise on every rank alike if any rank's input was invalid or the ranks disagree."""
    bad = [r for r, row in enumerate(table) if row[0]]
    if bad:
        mine = f"; rank {rank}: " + "; ".join(problems) if problems else ""
        raise DispatchError(f"invalid dispatch input on rank(s) {bad}{mine}")
    names = (
        "K (top-k)",
        "num_experts",
        "H",
        "hidden dtype",
        "max_tokens_per_rank",
        "recv_cap",
        "format",
    )
    for column, name in zip(range(2, _FIXED), names, strict=True):
        values = [row[column] for row in table]
        if len(set(values)) > 1:
            raise DispatchError(f"ranks disagree on {name}: {values} (rank order)")
    fixed = table[0]
    most_sent = max(row[1] for row in table)
    if fixed[6] >= 0 and fixed[6] < most_sent:
        raise DispatchError(
            f"max_tokens_per_rank={fixed[6]} is below the {most_sent} tokens a rank sends"
        )
    if fixed[7] < 0:
        raise DispatchError(f"recv_cap must be >= 0 (0 = no cap), got {fixed[7]}")


def _exchange_rows(call: _Call, parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Send `parts[i][plan.tokens]` (row-wise), return the received parts, rank-major."""
    return _exchange(call, [p[call.plan.tokens] for p in parts])


def _exchange(call: _Call, rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Send the parts' rows in `plan` order (already one row per sent row), return the received."""
    layout = [(p.dtype, tuple(p.shape[1:])) for p in rows]
    received = wire.exchange(wire.pack(rows), call.plan.rows, call.recv_rows, call.group)
    return wire.unpack(received, layout)


def _handle(
    call: _Call,
    *,
    back_rows: tuple[int, ...] | None = None,
    return_rows: tuple[int, ...] | None = None,
    send_k: torch.Tensor | None = None,
    recv_experts: torch.Tensor | None = None,
    recv_slots: torch.Tensor | None = None,
    topk_ids: torch.Tensor | None = None,
) -> DispatchHandle:
    """The combine goes back the way the rows came unless the format says otherwise."""
    return DispatchHandle(
        format=call.format,
        group=call.group,
        rank=call.rank,
        world=call.world,
        num_tokens=int(call.hidden.shape[0]),
        hidden_size=int(call.hidden.shape[1]),
        send_rows=call.plan.rows,
        send_tokens=call.plan.tokens,
        recv_rows=call.recv_rows,
        back_rows=call.plan.rows if back_rows is None else back_rows,
        return_rows=call.recv_rows if return_rows is None else return_rows,
        send_k=send_k,
        recv_experts=recv_experts,
        recv_slots=recv_slots,
        topk_ids=topk_ids,
    )


def _standard(call: _Call) -> tuple[DispatchOutput, DispatchHandle]:
    # Every rank gets the whole batch (an all-gather by all-to-all, uneven sizes allowed).
    all_hidden, all_ids, all_weights = _exchange_rows(call, [call.hidden, call.ids, call.weights])
    output = StandardDispatchOutput(
        hidden_states=all_hidden,
        hidden_states_scale=None,
        topk_output=TopKOutput(topk_weights=all_weights, topk_ids=all_ids, router_logits=None),
    )
    # Combine sends each rank's slice of the [T, H] output back to its sender.
    back_rows = tuple([call.hidden.shape[0]] * call.world)
    return output, _handle(call, back_rows=back_rows, return_rows=call.recv_rows)


def _deepep_normal(call: _Call) -> tuple[DispatchOutput, DispatchHandle]:
    recv_hidden, recv_ids, recv_weights = _exchange_rows(
        call, [call.hidden, call.ids, call.weights]
    )
    # The same steps as the emulation, on the rows that arrived.
    rank, local_count = call.rank, call.num_experts // call.world
    wide = recv_ids.long()
    on_rank = (wide >= 0) & (wide // local_count == rank)
    local_ids = torch.where(on_rank, wide - rank * local_count, -1)
    per_expert = torch.bincount(local_ids[on_rank], minlength=local_count)
    output = DeepEPNormalDispatchOutput(
        hidden_states=recv_hidden,
        hidden_states_scale=None,
        topk_ids=local_ids,
        topk_weights=torch.where(on_rank, recv_weights, 0.0),
        num_recv_tokens_per_expert=[int(n) for n in per_expert.tolist()],
    )
    return output, _handle(call)


def _deepep_ll(call: _Call) -> tuple[DispatchOutput, DispatchHandle]:
    capacity = _ll_capacity(call)
    local_count = call.num_experts // call.world
    hidden, plan = call.hidden, call.plan
    assert plan.experts is not None
    fp8_wire = call.format == DEEPEP_LL_FP8
    if fp8_wire:
        wire_hidden, wire_scale = deepep_ll_fp8_wire(hidden)
        parts = [stale.as_bytes(wire_hidden), wire_scale]
    else:
        parts = [hidden]
    # Each pair carries its row and its expert, made local on arrival.
    received = _exchange(call, [p[plan.tokens] for p in parts] + [plan.experts.unsqueeze(1)])
    experts = received[-1].squeeze(1) - call.rank * local_count
    counts, slots = _slab_slots(experts, local_count, hidden.device)
    slab, scale = _ll_slabs(call, received, experts, slots, local_count, capacity, fp8_wire)
    sent = int(hidden.shape[0])
    top_k = int(call.ids.shape[1])
    output = DeepEPLLDispatchOutput(
        hidden_states=slab,
        hidden_states_scale=scale,
        topk_ids=call.ids.long(),
        topk_weights=call.weights,
        masked_m=counts.to(torch.int32),
        expected_m=deepep_ll_expected_m(sent, call.world, top_k, call.num_experts),
    )
    return output, _handle(
        call, send_k=plan.ks, recv_experts=experts, recv_slots=slots, topk_ids=call.ids.long()
    )


def _ll_capacity(call: _Call) -> int:
    """Rows of each expert's slab; raises on every rank alike if an expert receives more."""
    capacity = call.max_tokens_per_rank * call.world
    expert_counts = [
        sum(row[_FIXED + call.world + e] for row in call.table) for e in range(call.num_experts)
    ]
    if expert_counts and max(expert_counts) > capacity:
        raise DispatchError(
            f"an expert receives {max(expert_counts)} tokens, more than the slab capacity "
            f"{capacity} (max_tokens_per_rank * ep_size)"
        )
    return capacity


def _slab_slots(
    experts: torch.Tensor, local_count: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs per local expert, and each pair's slot within its expert's slab in arrival order
    (sender rank, then token, then k)."""
    order = torch.argsort(experts, stable=True)
    counts = torch.bincount(experts, minlength=local_count)
    starts = torch.cumsum(counts, 0) - counts
    slots = torch.empty_like(experts)
    slots[order] = torch.arange(experts.numel(), device=device) - starts[experts[order]]
    return counts, slots


def _ll_slabs(
    call: _Call,
    received: list[torch.Tensor],
    experts: torch.Tensor,
    slots: torch.Tensor,
    local_count: int,
    capacity: int,
    fp8_wire: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The [local experts, capacity, H] slab (and fp8 scales) with the received rows in place."""
    hidden_size = int(call.hidden.shape[1])
    device = call.hidden.device
    shape = (local_count, capacity, hidden_size)
    if fp8_wire:
        slab = poison.fp8(shape, device)
        slab.view(torch.uint8)[experts, slots] = received[0]
        # DeepEP stores the scales column-major in the last two dims.
        scale = stale.ll_scales(local_count, hidden_size, capacity, device)
        scale[experts, slots] = received[1]
        return slab, scale
    slab = poison.bf16(shape, call.hidden.dtype, device)
    slab[experts, slots] = received[0]
    return slab, None


def _mori(call: _Call) -> tuple[DispatchOutput, DispatchHandle]:
    hidden, ids, weights, rank, world = call.hidden, call.ids, call.weights, call.rank, call.world
    capacity = call.max_tokens_per_rank * world
    wire_kind = MORI_WIRES[call.format]
    wire_hidden, wire_scale = MORI_SENDERS[wire_kind](hidden)
    # Quantized wires travel as bytes: CPU indexing and gloo lack fp8/fp4/e8m0 kernels.
    parts = [stale.as_bytes(part) for part in (wire_hidden, wire_scale) if part is not None]
    received = _exchange_rows(call, [*parts, ids, weights])
    total_recv = sum(call.recv_rows)
    stale_hidden, stale_scale = poison.mori_buffers(
        wire_kind, capacity, wire_hidden, wire_scale, hidden.device
    )
    stale.as_bytes(stale_hidden)[:total_recv] = received[0]
    if stale_scale is not None:
        stale.as_bytes(stale_scale)[:total_recv] = received[1]
    stale_ids, stale_weights = poison.mori_routing(
        rank, capacity, ids.shape[1], call.num_experts, hidden.device
    )
    stale_ids[:total_recv] = received[-2]
    stale_weights[:total_recv] = received[-1]
    # EPv2: the same rows, with its scales as strided views and combine's staging view.
    handed = stale.mori_output(
        call.format,
        stale_hidden,
        stale_scale,
        (stale_ids, stale_weights),
        (ids, weights),
        total_recv,
        hidden.dtype,
        call.recv_cap,
    )
    # MORI's combine reads only rows below total_recv (and a positive recv_cap): rows that
    # arrived past the cap never go back, on any rank.
    table, recv_cap = call.table, call.recv_cap
    back = tuple(_returned(table, d, rank, world, capacity, recv_cap) for d in range(world))
    ret = tuple(_returned(table, rank, s, world, capacity, recv_cap) for s in range(world))
    return handed, _handle(call, back_rows=back, return_rows=ret)


def _returned(
    table: list[list[int]], dest: int, source: int, world: int, capacity: int, recv_cap: int
) -> int:
    """Rows of `source`'s block on MORI rank `dest` that its combine reads."""
    column = [row[_FIXED + dest] for row in table]
    total = sum(column)
    readable = min(total, recv_cap_rows(recv_cap, capacity))
    start = sum(column[:source])
    return max(0, min(column[source], readable - start))



"""Emulated dispatchers: every format's per-rank dispatch outputs from one global batch, and the
combine that folds per-rank combine inputs back into one `[T, H]` result, on one process.

What each format delivers follows docs/formats.md ("Dispatcher facts" and each format's "Arrives"):
the standard path replicates the batch; DeepEP normal sends each token once to every rank owning
one of its experts, with local ids and -1; DeepEP low latency fills per-expert slabs and counts them
in `masked_m`; MORI fills fixed-capacity buffers with each token's full routing, `total_recv` valid
rows first. Rows a real dispatcher leaves undefined (slab rows past `masked_m`, MORI rows past
`total_recv`) hold large finite values, never zeros, so a runner or combine that reads them is
visibly wrong (`moe_runtime.stale` draws them). Arrival order is sender rank, then token (then
top-k slot for slabs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from moe_runtime import stale
from moe_runtime.checks import recv_cap_rows

# The format names are the runtime's (moe_runtime.formats); the `X as X` imports keep them
# reachable as `emulate.X`, the spelling tests and benchmarks use next to `emulate.dispatch`.
from moe_runtime.formats import (
    COMBINE_INPUT_TYPES,
    DEEPEP_LL_FORMATS,
    MORI_SENDERS,
    MORI_WIRES,
    deepep_ll_expected_m,
    deepep_ll_fp8_wire,
    routing_problems,
)
from moe_runtime.formats import DEEPEP_LL as DEEPEP_LL
from moe_runtime.formats import DEEPEP_LL_FP8 as DEEPEP_LL_FP8
from moe_runtime.formats import DEEPEP_NORMAL as DEEPEP_NORMAL
from moe_runtime.formats import FORMATS as FORMATS
from moe_runtime.formats import MORI_LL as MORI_LL
from moe_runtime.formats import MORI_LL_FP4 as MORI_LL_FP4
from moe_runtime.formats import MORI_LL_FP8 as MORI_LL_FP8
from moe_runtime.formats import MORI_LL_FP8_TOKEN as MORI_LL_FP8_TOKEN
from moe_runtime.formats import MORI_LL_MXFP8 as MORI_LL_MXFP8
from moe_runtime.formats import MORI_NORMAL as MORI_NORMAL
from moe_runtime.formats import MORI_NORMAL_FP4 as MORI_NORMAL_FP4
from moe_runtime.formats import MORI_NORMAL_FP8 as MORI_NORMAL_FP8
from moe_runtime.formats import MORI_NORMAL_FP8_TOKEN as MORI_NORMAL_FP8_TOKEN
from moe_runtime.formats import MORI_NORMAL_MXFP8 as MORI_NORMAL_MXFP8
from moe_runtime.formats import MORI_V2 as MORI_V2
from moe_runtime.formats import MORI_V2_FORMATS as MORI_V2_FORMATS
from moe_runtime.formats import MORI_V2_FP4 as MORI_V2_FP4
from moe_runtime.formats import MORI_V2_FP8 as MORI_V2_FP8
from moe_runtime.formats import MORI_V2_MXFP8 as MORI_V2_MXFP8
from moe_runtime.formats import STANDARD as STANDARD
from moe_runtime.types import (
    CombineInput,
    DeepEPLLCombineInput,
    DeepEPLLDispatchOutput,
    DeepEPNormalDispatchOutput,
    DispatchOutput,
    MoeLayerConfig,
    StandardDispatchOutput,
    TopKOutput,
)


@dataclass(frozen=True)
class GlobalBatch:
    """All tokens of all ranks; rank r sends rows `tokens_slice(r)` of every tensor."""

    hidden_states: torch.Tensor  # [T, H]
    topk_ids: torch.Tensor  # [T, K] int32, global expert ids in [0, E); < 0 means not routed
    topk_weights: torch.Tensor  # [T, K] float32
    num_experts: int
    ep_size: int

    def __post_init__(self) -> None:
        problems = routing_problems(
            self.hidden_states, self.topk_ids, self.topk_weights, self.num_experts, self.ep_size
        )
        if problems:
            raise ValueError("invalid GlobalBatch: " + "; ".join(problems))

    @property
    def num_tokens(self) -> int:
        return int(self.hidden_states.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.hidden_states.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.topk_ids.shape[1])

    @property
    def num_local_experts(self) -> int:
        return self.num_experts // self.ep_size

    def tokens_slice(self, rank: int) -> slice:
        """Rows rank `rank` sends: contiguous, sizes differ by at most one, earlier ranks larger."""
        if not 0 <= rank < self.ep_size:
            raise ValueError(f"rank must be in [0, {self.ep_size}), got {rank}")
        base, extra = divmod(self.num_tokens, self.ep_size)
        start = rank * base + min(rank, extra)
        return slice(start, start + base + (1 if rank < extra else 0))

    def layer_config(self, rank: int, intermediate_size: int, activation: str) -> MoeLayerConfig:
        """The layer config of rank `rank`'s runner for this batch: its share of the experts,
        the batch's H and K, and the given I and activation."""
        return MoeLayerConfig(
            num_experts=self.num_experts,
            num_local_experts=self.num_local_experts,
            ep_rank=rank,
            ep_size=self.ep_size,
            top_k=self.top_k,
            hidden_size=self.hidden_size,
            intermediate_size=intermediate_size,
            activation=activation,
        )


def make_batch(
    num_tokens: int,
    hidden_size: int,
    num_experts: int,
    top_k: int,
    *,
    ep_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
) -> GlobalBatch:
    """A router-like batch: hidden ~ N(0, 1), `top_k` distinct experts per token taken from random
    logits, weights the softmax of those logits (positive, summing to one per token)."""
    if num_tokens < 0 or hidden_size < 1 or not 1 <= top_k <= num_experts:
        raise ValueError(
            f"need num_tokens >= 0, hidden_size >= 1 and 1 <= top_k <= num_experts, got "
            f"num_tokens={num_tokens}, hidden_size={hidden_size}, top_k={top_k}, "
            f"num_experts={num_experts}"
        )
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_tokens, hidden_size, generator=generator)
    logits = torch.randn(num_tokens, num_experts, generator=generator)
    top_logits, ids = logits.topk(top_k, dim=1)
    return GlobalBatch(
        hidden_states=hidden.to(device=device, dtype=dtype),
        topk_ids=ids.to(device=device, dtype=torch.int32),
        topk_weights=torch.softmax(top_logits, dim=1).to(device=device),
        num_experts=num_experts,
        ep_size=ep_size,
    )


@dataclass(frozen=True)
class Dispatched:
    """Per-rank dispatch outputs of one format, plus what `combine` needs to fold them back."""

    format: str
    outputs: tuple[DispatchOutput, ...]  # one per rank
    batch: GlobalBatch = field(repr=False)
    # Normal and MORI: the global token of each received row per rank (-1 for MORI's stale rows).
    _row_tokens: tuple[torch.Tensor, ...] = field(default=(), repr=False)
    # MORI: rows combine reads per rank (total_recv, capped by recv_cap).
    _readable_rows: tuple[int, ...] = field(default=(), repr=False)
    # Low latency: [T, K] slot of each (token, k) in its expert's slab, -1 if not dispatched.
    _slots: torch.Tensor | None = field(default=None, repr=False)

    @property
    def num_tokens(self) -> int:
        return self.batch.num_tokens

    @property
    def hidden_size(self) -> int:
        return self.batch.hidden_size


def dispatch(
    batch: GlobalBatch,
    format: str,
    *,
    max_tokens_per_rank: int | None = None,
    recv_cap: int = 0,
) -> Dispatched:
    """What every rank receives from the dispatcher of `format`.

    `max_tokens_per_rank` sizes the low-latency slabs (`C = max_tokens_per_rank * ep_size`) and the
    MORI capacity (`R` likewise); it defaults to the most tokens any rank sends. `recv_cap` is
    handed to MORI outputs as is (0 = no cap) and limits the rows MORI's combine reads.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown dispatch format {format!r}; valid: {', '.join(FORMATS)}")
    most_sent = max(_sent(batch, rank) for rank in range(batch.ep_size))
    if max_tokens_per_rank is None:
        max_tokens_per_rank = most_sent
    elif max_tokens_per_rank < most_sent:
        raise ValueError(
            f"max_tokens_per_rank={max_tokens_per_rank} is below the {most_sent} tokens "
            "a rank sends"
        )
    if recv_cap < 0:
        raise ValueError(f"recv_cap must be >= 0 (0 = no cap), got {recv_cap}")
    if format == STANDARD:
        return _dispatch_standard(batch)
    if format == DEEPEP_NORMAL:
        return _dispatch_deepep_normal(batch)
    if format in DEEPEP_LL_FORMATS:
        return _dispatch_deepep_ll(batch, format, max_tokens_per_rank * batch.ep_size)
    return _dispatch_mori(batch, format, max_tokens_per_rank * batch.ep_size, recv_cap)


def combine(dispatched: Dispatched, combine_inputs: Sequence[CombineInput]) -> torch.Tensor:
    """Fold one combine input per rank back into `[T, H]` float32, as the format's combine does."""
    expected_type = COMBINE_INPUT_TYPES[dispatched.format]
    if len(combine_inputs) != len(dispatched.outputs):
        raise ValueError(
            f"need one combine input per rank ({len(dispatched.outputs)}), "
            f"got {len(combine_inputs)}"
        )
    for rank, combine_input in enumerate(combine_inputs):
        if type(combine_input) is not expected_type:
            raise TypeError(
                f"rank {rank}: format {dispatched.format!r} combines {expected_type.__name__}, "
                f"got {type(combine_input).__name__}"
            )
    if dispatched.format == STANDARD:
        return _combine_standard(dispatched, combine_inputs)
    if dispatched.format in DEEPEP_LL_FORMATS:
        return _combine_deepep_ll(dispatched, combine_inputs)
    return _combine_rows(dispatched, combine_inputs)


def _sent(batch: GlobalBatch, rank: int) -> int:
    rows = batch.tokens_slice(rank)
    return int(rows.stop - rows.start)


def _destination_ranks(batch: GlobalBatch) -> torch.Tensor:
    """[T, ep] bool: token t has at least one expert on rank r (ids < 0 go nowhere)."""
    ids = batch.topk_ids.long()
    nowhere = batch.ep_size
    rank_of = torch.where(ids >= 0, ids // batch.num_local_experts, nowhere)
    reaches = torch.zeros(
        batch.num_tokens, batch.ep_size + 1, dtype=torch.bool, device=ids.device
    )
    reaches.scatter_(1, rank_of, True)
    return reaches[:, : batch.ep_size]


def _dispatch_standard(batch: GlobalBatch) -> Dispatched:
    # Every rank holds its own copy of the whole batch, with global ids.
    outputs = tuple(
        StandardDispatchOutput(
            hidden_states=batch.hidden_states.clone(),
            hidden_states_scale=None,
            topk_output=TopKOutput(
                topk_weights=batch.topk_weights.clone(),
                topk_ids=batch.topk_ids.clone(),
                router_logits=None,
            ),
        )
        for _ in range(batch.ep_size)
    )
    return Dispatched(STANDARD, outputs, batch)


def _dispatch_deepep_normal(batch: GlobalBatch) -> Dispatched:
    reaches = _destination_ranks(batch)
    local_count = batch.num_local_experts
    outputs: list[DispatchOutput] = []
    row_tokens: list[torch.Tensor] = []
    for rank in range(batch.ep_size):
        # Ascending token order is sender rank, then token: ranks send contiguous slices.
        tokens = reaches[:, rank].nonzero().squeeze(1)
        ids = batch.topk_ids[tokens].long()
        on_rank = (ids >= 0) & (ids // local_count == rank)
        local_ids = torch.where(on_rank, ids - rank * local_count, -1)
        weights = torch.where(on_rank, batch.topk_weights[tokens], 0.0)
        per_expert = torch.bincount(local_ids[on_rank], minlength=local_count)
        outputs.append(
            DeepEPNormalDispatchOutput(
                hidden_states=batch.hidden_states[tokens],
                hidden_states_scale=None,
                topk_ids=local_ids,
                topk_weights=weights,
                num_recv_tokens_per_expert=[int(n) for n in per_expert.tolist()],
            )
        )
        row_tokens.append(tokens)
    return Dispatched(DEEPEP_NORMAL, tuple(outputs), batch, _row_tokens=tuple(row_tokens))


def _slab_slots(batch: GlobalBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Slot of every (token, k) within its expert's slab, in arrival order, and per-expert counts.

    Returns (slots [T, K] int64 with -1 where the id is < 0, counts [E] int64).
    """
    ids = batch.topk_ids.long().flatten()
    pairs = (ids >= 0).nonzero().squeeze(1)  # token-major, so arrival order within each expert
    experts = ids[pairs]
    order = torch.argsort(experts, stable=True)
    counts = torch.bincount(experts, minlength=batch.num_experts)
    starts = torch.cumsum(counts, 0) - counts
    slot_sorted = torch.arange(pairs.numel(), device=ids.device) - starts[experts[order]]
    slots = torch.full_like(ids, -1)
    slots[pairs[order]] = slot_sorted
    return slots.view(batch.topk_ids.shape), counts


def _dispatch_deepep_ll(batch: GlobalBatch, format: str, capacity: int) -> Dispatched:
    slots, counts = _slab_slots(batch)
    if counts.numel() and int(counts.max()) > capacity:
        raise ValueError(
            f"an expert receives {int(counts.max())} tokens, more than the slab capacity "
            f"{capacity} (max_tokens_per_rank * ep_size)"
        )
    local_count = batch.num_local_experts
    hidden_size = batch.hidden_size
    device = batch.hidden_states.device
    fp8_wire = format == DEEPEP_LL_FP8
    if fp8_wire:
        wire, wire_scale = deepep_ll_fp8_wire(batch.hidden_states)
    ids = batch.topk_ids.long()
    token_of_pair = torch.arange(batch.num_tokens, device=device).unsqueeze(1).expand_as(ids)
    outputs: list[DispatchOutput] = []
    for rank in range(batch.ep_size):
        on_rank = (ids >= 0) & (ids // local_count == rank)
        experts = ids[on_rank] - rank * local_count
        slot = slots[on_rank]
        tokens = token_of_pair[on_rank]
        shape = (local_count, capacity, hidden_size)
        scale: torch.Tensor | None = None
        if fp8_wire:
            hidden = stale.fp8(shape, device)
            stale.as_bytes(hidden)[experts, slot] = stale.as_bytes(wire)[tokens]
            scale = stale.ll_scales(local_count, hidden_size, capacity, device)
            scale[experts, slot] = wire_scale[tokens]
        else:
            hidden = stale.bf16(shape, batch.hidden_states.dtype, device)
            hidden[experts, slot] = batch.hidden_states[tokens]
        sent = batch.tokens_slice(rank)
        sent_count = sent.stop - sent.start
        outputs.append(
            DeepEPLLDispatchOutput(
                hidden_states=hidden,
                hidden_states_scale=scale,
                topk_ids=ids[sent],
                topk_weights=batch.topk_weights[sent],
                masked_m=counts[rank * local_count : (rank + 1) * local_count].to(torch.int32),
                expected_m=deepep_ll_expected_m(
                    sent_count, batch.ep_size, batch.top_k, batch.num_experts
                ),
            )
        )
    return Dispatched(format, tuple(outputs), batch, _slots=slots)


def _dispatch_mori(batch: GlobalBatch, format: str, capacity: int, recv_cap: int) -> Dispatched:
    wire = MORI_WIRES[format]
    wire_hidden, wire_scale = MORI_SENDERS[wire](batch.hidden_states)
    device = batch.hidden_states.device
    reaches = _destination_ranks(batch)
    generator = stale.generator()
    outputs: list[DispatchOutput] = []
    row_tokens: list[torch.Tensor] = []
    readable: list[int] = []
    for rank in range(batch.ep_size):
        tokens = reaches[:, rank].nonzero().squeeze(1)
        total_recv = int(tokens.numel())
        hidden, scale = stale.mori_buffers(wire, capacity, wire_hidden, wire_scale, device)
        stale.as_bytes(hidden)[:total_recv] = stale.as_bytes(wire_hidden)[tokens]
        if scale is not None and wire_scale is not None:
            stale.as_bytes(scale)[:total_recv] = stale.as_bytes(wire_scale)[tokens]
        ids, weights = stale.mori_routing(generator, capacity, batch.top_k, batch.num_experts)
        ids, weights = ids.to(device), weights.to(device)
        ids[:total_recv] = batch.topk_ids[tokens]  # the full routing, ids < 0 included verbatim
        weights[:total_recv] = batch.topk_weights[tokens]
        sent = batch.tokens_slice(rank)
        origin = (batch.topk_ids[sent], batch.topk_weights[sent])
        outputs.append(
            stale.mori_output(
                format,
                hidden,
                scale,
                (ids, weights),
                origin,
                total_recv,
                batch.hidden_states.dtype,
                recv_cap,
            )
        )
        unfilled = torch.full((capacity - total_recv,), -1, dtype=torch.long, device=device)
        row_tokens.append(torch.cat([tokens, unfilled]))
        readable.append(min(total_recv, recv_cap_rows(recv_cap, capacity)))
    return Dispatched(
        format, tuple(outputs), batch, _row_tokens=tuple(row_tokens), _readable_rows=tuple(readable)
    )


def _output_device(combine_inputs: Sequence[CombineInput]) -> torch.device:
    return combine_inputs[0].hidden_states.device


def _combine_standard(
    dispatched: Dispatched, combine_inputs: Sequence[CombineInput]
) -> torch.Tensor:
    # All-reduce: every rank computed its own experts' share of every token.
    expected = (dispatched.num_tokens, dispatched.hidden_size)
    total = torch.zeros(expected, device=_output_device(combine_inputs))
    for rank, combine_input in enumerate(combine_inputs):
        hidden = combine_input.hidden_states
        if tuple(hidden.shape) != expected:
            raise ValueError(f"rank {rank}: standard output must be {expected}, got {hidden.shape}")
        total += hidden.float()
    return total


def _combine_rows(dispatched: Dispatched, combine_inputs: Sequence[CombineInput]) -> torch.Tensor:
    """DeepEP normal and MORI: unweighted sum, per token, of its row on every destination rank."""
    total = torch.zeros(
        dispatched.num_tokens, dispatched.hidden_size, device=_output_device(combine_inputs)
    )
    is_mori = dispatched.format in MORI_WIRES
    for rank, combine_input in enumerate(combine_inputs):
        tokens = dispatched._row_tokens[rank]
        hidden = combine_input.hidden_states
        # MORI reads only rows below total_recv (and recv_cap); DeepEP normal reads every row.
        rows = dispatched._readable_rows[rank] if is_mori else int(tokens.numel())
        if hidden.dim() != 2 or hidden.shape[1] != dispatched.hidden_size or (
            hidden.shape[0] < rows or (not is_mori and hidden.shape[0] != rows)
        ):
            raise ValueError(
                f"rank {rank}: {dispatched.format} combine reads {rows} rows of width "
                f"{dispatched.hidden_size}, got an output of shape {tuple(hidden.shape)}"
            )
        total.index_add_(0, tokens[:rows].to(total.device), hidden[:rows].float())
    return total


def _combine_deepep_ll(
    dispatched: Dispatched, combine_inputs: Sequence[CombineInput]
) -> torch.Tensor:
    """Per token, sum over its top-k of weight * expert output at the token's slab slot, with the
    sender's ids and weights from its combine input (the expert side did not weight)."""
    slots = dispatched._slots
    if slots is None:
        raise ValueError("a low-latency Dispatched carries slab slots; this one was altered")
    first = dispatched.outputs[0]
    if not isinstance(first, DeepEPLLDispatchOutput):
        raise TypeError(f"expected DeepEPLLDispatchOutput, got {type(first).__name__}")
    slab_shape = (*first.hidden_states.shape[:2], dispatched.hidden_size)
    local_count = slab_shape[0]
    device = _output_device(combine_inputs)
    for rank, combine_input in enumerate(combine_inputs):
        if tuple(combine_input.hidden_states.shape) != slab_shape:
            raise ValueError(
                f"rank {rank}: low-latency output must be {slab_shape}, "
                f"got {tuple(combine_input.hidden_states.shape)}"
            )
    ll_inputs = [ci for ci in combine_inputs if isinstance(ci, DeepEPLLCombineInput)]
    outputs = torch.stack([ci.hidden_states.float().to(device) for ci in ll_inputs])
    ids = torch.cat([ci.topk_ids for ci in ll_inputs])
    weights = torch.cat([ci.topk_weights for ci in ll_inputs])
    if ids.shape != slots.shape or weights.shape != slots.shape:
        raise ValueError(
            f"combine inputs must carry the senders' [T, K] = {tuple(slots.shape)} ids and "
            f"weights, got {tuple(ids.shape)} and {tuple(weights.shape)}"
        )
    ids = ids.long().to(device)
    slots = slots.to(device)
    routed = ids >= 0
    if bool((routed & (slots < 0)).any()):
        raise ValueError("combine input ids route a (token, k) that was never dispatched")
    tokens, ks = routed.nonzero(as_tuple=True)
    experts = ids[tokens, ks]
    rows = outputs[experts // local_count, experts % local_count, slots[tokens, ks]]
    total = torch.zeros(dispatched.num_tokens, dispatched.hidden_size, device=device)
    total.index_add_(0, tokens, rows * weights.to(device)[tokens, ks].unsqueeze(1))
    return total

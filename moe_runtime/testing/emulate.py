"""Emulated dispatchers: every format's per-rank dispatch outputs from one global batch, and the
combine that folds per-rank combine inputs back into one `[T, H]` result, on one process.

What each format delivers follows docs/formats.md ("Dispatcher facts" and each format's "Arrives"):
the standard path replicates the batch; DeepEP normal sends each token once to every rank owning
one of its experts, with local ids and -1; DeepEP low latency fills per-expert slabs and counts them
in `masked_m`; MORI fills fixed-capacity buffers with each token's full routing, `total_recv` valid
rows first. Rows a real dispatcher leaves undefined (slab rows past `masked_m`, MORI rows past
`total_recv`) hold large finite values, never zeros, so a runner or combine that reads them is
visibly wrong. Arrival order is sender rank, then token (then top-k slot for slabs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from moe_runtime.quant import (
    E8M0,
    FP4X2,
    FP8,
    FP8_FNUZ,
    quantize_fp8_1x128,
    quantize_fp8_per_row,
    quantize_mxfp4,
    quantize_mxfp8,
)
from moe_runtime.types import (
    CombineInput,
    DeepEPLLCombineInput,
    DeepEPLLDispatchOutput,
    DeepEPNormalCombineInput,
    DeepEPNormalDispatchOutput,
    DispatchOutput,
    MoriEPLLCombineInput,
    MoriEPLLDispatchOutput,
    MoriEPNormalCombineInput,
    MoriEPNormalDispatchOutput,
    MoriEPV2DispatchOutput,
    StandardCombineInput,
    StandardDispatchOutput,
    TopKOutput,
)

STANDARD = "standard"
DEEPEP_NORMAL = "deepep_normal"
DEEPEP_LL = "deepep_ll"
DEEPEP_LL_FP8 = "deepep_ll_fp8"
MORI_NORMAL = "mori_normal"
MORI_LL = "mori_ll"
MORI_NORMAL_FP8 = "mori_normal_fp8"
MORI_NORMAL_FP4 = "mori_normal_fp4"
MORI_LL_FP8 = "mori_ll_fp8"
MORI_LL_FP4 = "mori_ll_fp4"
MORI_V2 = "mori_v2"
MORI_V2_FP8 = "mori_v2_fp8"
MORI_V2_FP4 = "mori_v2_fp4"
MORI_NORMAL_MXFP8 = "mori_normal_mxfp8"
MORI_LL_MXFP8 = "mori_ll_mxfp8"
MORI_V2_MXFP8 = "mori_v2_mxfp8"
MORI_NORMAL_FP8_TOKEN = "mori_normal_fp8_token"
MORI_LL_FP8_TOKEN = "mori_ll_fp8_token"

# Wire of each MORI format: bf16, fp8 per 1x128, mxfp4 per 1x32, mxfp8 per 1x32 (e8m0 scales) or
# fp8 per row (one fp32 scale per row).
_MORI_WIRES = {
    MORI_NORMAL: "bf16",
    MORI_LL: "bf16",
    MORI_NORMAL_FP8: "fp8",
    MORI_NORMAL_FP4: "fp4",
    MORI_LL_FP8: "fp8",
    MORI_LL_FP4: "fp4",
    MORI_V2: "bf16",
    MORI_V2_FP8: "fp8",
    MORI_V2_FP4: "fp4",
    MORI_NORMAL_MXFP8: "mxfp8",
    MORI_LL_MXFP8: "mxfp8",
    MORI_V2_MXFP8: "mxfp8",
    MORI_NORMAL_FP8_TOKEN: "fp8_token",
    MORI_LL_FP8_TOKEN: "fp8_token",
}
_MORI_LL = frozenset({MORI_LL, MORI_LL_FP8, MORI_LL_FP4, MORI_LL_MXFP8, MORI_LL_FP8_TOKEN})
MORI_V2_FORMATS = frozenset({MORI_V2, MORI_V2_FP8, MORI_V2_FP4, MORI_V2_MXFP8})
FORMATS: tuple[str, ...] = (STANDARD, DEEPEP_NORMAL, DEEPEP_LL, DEEPEP_LL_FP8, *_MORI_WIRES)

_COMBINE_INPUT_TYPES: dict[str, type] = {
    STANDARD: StandardCombineInput,
    DEEPEP_NORMAL: DeepEPNormalCombineInput,
    DEEPEP_LL: DeepEPLLCombineInput,
    DEEPEP_LL_FP8: DeepEPLLCombineInput,
    **{
        name: MoriEPLLCombineInput if name in _MORI_LL else MoriEPNormalCombineInput
        for name in _MORI_WIRES
    },
}

# Undefined rows: magnitudes far above any real activation, still finite after dequantization.
_GARBAGE_BF16 = 1024.0
_GARBAGE_FP8 = 448.0  # float8_e4m3fn's largest finite value
_GARBAGE_FP8_SCALE = 1024.0
_GARBAGE_FP4_BYTES = (0x77, 0xFF, 0x7F, 0xF7)  # nibble pairs of +-6.0, E2M1's largest magnitude
_GARBAGE_E8M0 = 127 + 16  # scale 2**16
_GARBAGE_SEED = 0x5EED
# MORI EPv2 moves each row's scales as int32 dwords in rows wider than the scales, and SGLang
# 0.5.23 hands them over as the view [:, :H/group] (token_dispatcher/moriep.py:1536-1545); its
# combine arena has rows of its own past the R the runner sees (moriep.py:1555-1558).
_V2_SCALE_PAD = 16
_V2_ARENA_EXTRA_ROWS = 3


@dataclass(frozen=True)
class GlobalBatch:
    """All tokens of all ranks; rank r sends rows `tokens_slice(r)` of every tensor."""

    hidden_states: torch.Tensor  # [T, H]
    topk_ids: torch.Tensor  # [T, K] int32, global expert ids in [0, E); < 0 means not routed
    topk_weights: torch.Tensor  # [T, K] float32
    num_experts: int
    ep_size: int

    def __post_init__(self) -> None:
        problems = []
        if self.hidden_states.dim() != 2:
            problems.append(f"hidden_states must be [T, H], got {tuple(self.hidden_states.shape)}")
        if self.topk_ids.dim() != 2 or self.topk_ids.dtype != torch.int32:
            problems.append(
                f"topk_ids must be int32 [T, K], got {self.topk_ids.dtype} "
                f"{tuple(self.topk_ids.shape)}"
            )
        if self.topk_weights.dtype != torch.float32 or (
            self.topk_weights.shape != self.topk_ids.shape
        ):
            problems.append(
                f"topk_weights must be float32 shaped like topk_ids {tuple(self.topk_ids.shape)}, "
                f"got {self.topk_weights.dtype} {tuple(self.topk_weights.shape)}"
            )
        if self.ep_size < 1 or self.num_experts < 1 or self.num_experts % self.ep_size != 0:
            problems.append(
                f"num_experts ({self.num_experts}) must be a positive multiple of ep_size "
                f"({self.ep_size})"
            )
        if not problems and self.hidden_states.shape[0] != self.topk_ids.shape[0]:
            problems.append(
                f"hidden_states has {self.hidden_states.shape[0]} rows, topk_ids has "
                f"{self.topk_ids.shape[0]}"
            )
        if not problems and self.topk_ids.numel() and int(self.topk_ids.max()) >= self.num_experts:
            problems.append(f"topk_ids must be < num_experts ({self.num_experts})")
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
    num_tokens: int
    hidden_size: int
    # Normal and MORI: the global token of each received row per rank (-1 for MORI's stale rows).
    _row_tokens: tuple[torch.Tensor, ...] = field(default=(), repr=False)
    # MORI: rows combine reads per rank (total_recv, capped by recv_cap).
    _readable_rows: tuple[int, ...] = field(default=(), repr=False)
    # Low latency: [T, K] slot of each (token, k) in its expert's slab, -1 if not dispatched.
    _slots: torch.Tensor | None = field(default=None, repr=False)


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
    if format in (DEEPEP_LL, DEEPEP_LL_FP8):
        return _dispatch_deepep_ll(batch, format, max_tokens_per_rank * batch.ep_size)
    return _dispatch_mori(batch, format, max_tokens_per_rank * batch.ep_size, recv_cap)


def combine(dispatched: Dispatched, combine_inputs: Sequence[CombineInput]) -> torch.Tensor:
    """Fold one combine input per rank back into `[T, H]` float32, as the format's combine does."""
    expected_type = _COMBINE_INPUT_TYPES[dispatched.format]
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
    if dispatched.format in (DEEPEP_LL, DEEPEP_LL_FP8):
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


def _as_bytes(x: torch.Tensor) -> torch.Tensor:
    """A uint8 view of one-byte float tensors: PyTorch's CPU indexing lacks kernels for them."""
    if x.dtype in (FP8, FP8_FNUZ, FP4X2, E8M0):
        return x.view(torch.uint8)
    return x


def _garbage_generator() -> torch.Generator:
    return torch.Generator().manual_seed(_GARBAGE_SEED)


def _garbage_bf16(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Values of magnitude in [512, 1536) with random signs."""
    generator = _garbage_generator()
    magnitude = _GARBAGE_BF16 * (0.5 + torch.rand(shape, generator=generator))
    sign = torch.randint(0, 2, shape, generator=generator) * 2 - 1
    return (magnitude * sign).to(device=device, dtype=dtype)


def _garbage_fp8(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """+-448 (float8_e4m3fn's max) with random signs."""
    sign = torch.randint(0, 2, shape, generator=_garbage_generator()) * 2 - 1
    return (sign * _GARBAGE_FP8).to(device=device, dtype=FP8)


def _garbage_fp4(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Packed bytes of +-6.0 pairs, as float4_e2m1fn_x2."""
    choice = torch.randint(0, len(_GARBAGE_FP4_BYTES), shape, generator=_garbage_generator())
    table = torch.tensor(_GARBAGE_FP4_BYTES, dtype=torch.uint8)
    return table[choice].to(device).view(FP4X2)


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
    return Dispatched(STANDARD, outputs, batch.num_tokens, batch.hidden_size)


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
    return Dispatched(
        DEEPEP_NORMAL,
        tuple(outputs),
        batch.num_tokens,
        batch.hidden_size,
        _row_tokens=tuple(row_tokens),
    )


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
        wire, wire_scale = quantize_fp8_1x128(batch.hidden_states)
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
            hidden = _garbage_fp8(shape, device)
            _as_bytes(hidden)[experts, slot] = _as_bytes(wire)[tokens]
            # DeepEP stores the scales column-major in the last two dims.
            scale = torch.full(
                (local_count, hidden_size // 128, capacity), _GARBAGE_FP8_SCALE, device=device
            ).transpose(1, 2)
            scale[experts, slot] = wire_scale[tokens]
        else:
            hidden = _garbage_bf16(shape, batch.hidden_states.dtype, device)
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
                # SGLang's DeepEP dispatcher: (T_r * group_size * K + E) // E.
                expected_m=(sent_count * batch.ep_size * batch.top_k + batch.num_experts)
                // batch.num_experts,
            )
        )
    return Dispatched(format, tuple(outputs), batch.num_tokens, hidden_size, _slots=slots)


def _mori_wire(
    batch: GlobalBatch, wire: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The activations each sender puts on the wire (quantized per row before dispatch)."""
    if wire == "fp8":
        return quantize_fp8_1x128(batch.hidden_states)
    if wire == "fp4":
        return quantize_mxfp4(batch.hidden_states)
    if wire == "mxfp8":
        # AITER's per_1x32 quant with scale_type e8m0 (SGLang 0.5.23 moriep.py:794-814).
        return quantize_mxfp8(batch.hidden_states)
    if wire == "fp8_token":
        # AITER's per_Token quant (vLLM mori_prepare_finalize.py 1dbff2c76f:102-119).
        return quantize_fp8_per_row(batch.hidden_states)
    return batch.hidden_states, None


def _mori_stale(
    wire: str, rows: int, hidden: torch.Tensor, scale: torch.Tensor | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Capacity buffers of `rows` rows full of stale values, shaped and typed like the wire."""
    width = hidden.shape[1]
    if wire in ("fp8", "fp8_token") and scale is not None:
        stale_scale = torch.full((rows, scale.shape[1]), _GARBAGE_FP8_SCALE, device=device)
        return _garbage_fp8((rows, width), device), stale_scale
    if wire in ("fp4", "mxfp8") and scale is not None:
        stale_scale = torch.full(
            (rows, scale.shape[1]), _GARBAGE_E8M0, dtype=torch.uint8, device=device
        ).view(scale.dtype)
        stale = _garbage_fp4 if wire == "fp4" else _garbage_fp8
        return stale((rows, width), device), stale_scale
    return _garbage_bf16((rows, width), hidden.dtype, device), None


def as_mori_v2(
    output: MoriEPNormalDispatchOutput | MoriEPLLDispatchOutput,
) -> MoriEPV2DispatchOutput:
    """What MORI EPv2 hands over for the same arrival as MORI's normal kernel: the scales
    `[R, H/group]` as a strided view of wider rows (their padding stale), and combine's staging
    view `[R, H]` in `out_dtype` (`expert_output`), full of stale values that a runner which does
    not write it leaves for combine to read."""
    rows = output.hidden_states.shape[0]
    device = output.hidden_states.device
    width = output.hidden_states.shape[1] * (2 if output.hidden_states.dtype == FP4X2 else 1)
    arena = _garbage_bf16((rows + _V2_ARENA_EXTRA_ROWS, width), output.out_dtype, device)
    return MoriEPV2DispatchOutput(
        hidden_states=output.hidden_states,
        hidden_states_scale=_strided_scale(output.hidden_states_scale),
        topk_ids=output.topk_ids,
        topk_weights=output.topk_weights,
        num_recv_tokens_per_expert=output.num_recv_tokens_per_expert,
        origin_topk_ids=output.origin_topk_ids,
        origin_topk_weights=output.origin_topk_weights,
        out_dtype=output.out_dtype,
        expert_output=arena[:rows],
        recv_cap=output.recv_cap,
    )


def _strided_scale(scale: torch.Tensor | None) -> torch.Tensor | None:
    """`scale` as the leading columns of wider rows whose other columns are stale."""
    if scale is None:
        return None
    rows, cols = scale.shape
    if scale.dtype == torch.float32:
        wide = torch.full((rows, cols + _V2_SCALE_PAD), _GARBAGE_FP8_SCALE, device=scale.device)
        wide[:, :cols] = scale
        return wide[:, :cols]
    wide_bytes = torch.full(
        (rows, cols + _V2_SCALE_PAD), _GARBAGE_E8M0, dtype=torch.uint8, device=scale.device
    )
    wide_bytes[:, :cols] = _as_bytes(scale)
    return wide_bytes.view(scale.dtype)[:, :cols]


def _dispatch_mori(batch: GlobalBatch, format: str, capacity: int, recv_cap: int) -> Dispatched:
    wire = _MORI_WIRES[format]
    wire_hidden, wire_scale = _mori_wire(batch, wire)
    device = batch.hidden_states.device
    reaches = _destination_ranks(batch)
    output_type = MoriEPLLDispatchOutput if format in _MORI_LL else MoriEPNormalDispatchOutput
    v2 = format in MORI_V2_FORMATS
    generator = _garbage_generator()
    outputs: list[DispatchOutput] = []
    row_tokens: list[torch.Tensor] = []
    readable: list[int] = []
    for rank in range(batch.ep_size):
        tokens = reaches[:, rank].nonzero().squeeze(1)
        total_recv = int(tokens.numel())
        hidden, scale = _mori_stale(wire, capacity, wire_hidden, wire_scale, device)
        _as_bytes(hidden)[:total_recv] = _as_bytes(wire_hidden)[tokens]
        if scale is not None and wire_scale is not None:
            _as_bytes(scale)[:total_recv] = _as_bytes(wire_scale)[tokens]
        # Stale routing looks real (valid global ids, positive weights) so that a runner which
        # ignores total_recv computes those rows instead of failing on them.
        ids = torch.randint(
            0, batch.num_experts, (capacity, batch.top_k), generator=generator, dtype=torch.int32
        ).to(device)
        weights = torch.rand((capacity, batch.top_k), generator=generator).to(device)
        ids[:total_recv] = batch.topk_ids[tokens]  # the full routing, ids < 0 included verbatim
        weights[:total_recv] = batch.topk_weights[tokens]
        sent = batch.tokens_slice(rank)
        output = output_type(
            hidden_states=hidden,
            hidden_states_scale=scale,
            topk_ids=ids,
            topk_weights=weights,
            num_recv_tokens_per_expert=torch.tensor(
                [total_recv], dtype=torch.int32, device=device
            ),
            origin_topk_ids=batch.topk_ids[sent],
            origin_topk_weights=batch.topk_weights[sent],
            out_dtype=batch.hidden_states.dtype,
            recv_cap=recv_cap,
        )
        outputs.append(as_mori_v2(output) if v2 else output)
        stale = torch.full((capacity - total_recv,), -1, dtype=torch.long, device=device)
        row_tokens.append(torch.cat([tokens, stale]))
        capped = 0 < recv_cap < capacity
        readable.append(min(total_recv, recv_cap) if capped else total_recv)
    return Dispatched(
        format,
        tuple(outputs),
        batch.num_tokens,
        batch.hidden_size,
        _row_tokens=tuple(row_tokens),
        _readable_rows=tuple(readable),
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
    is_mori = dispatched.format in _MORI_WIRES
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

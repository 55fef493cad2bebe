"""Combine across real processes: each rank's combine input back to `[T_r, H]` on its sender.

The inverse route of `dispatch`: every destination sends each sender the expert outputs of the rows
it got from it (one `all_to_all_single`), and the sender folds them as the format's combine does, in
the order `moe_runtime.testing.emulate.combine` uses (destination rank, then row), so the result is
that of the emulation's `[T, H]` float32 output for this rank's tokens, bit for bit on the CPU:
- standard: the sum over ranks of every rank's output rows for this rank's tokens (all-reduce);
- DeepEP normal and MORI: per token, the unweighted sum of its row from each destination rank
  (MORI: only rows below `total_recv` and a positive `recv_cap`);
- DeepEP low latency: per token, the sum over its top-k of weight * the expert's output at the
  token's slab slot, with the ids and weights of the sender's combine input (the expert side did
  not weight), slot 0 first.
Before moving any row, the ranks exchange a one-row check (input valid, output dtype, width), so
that a bad combine input raises on every rank instead of leaving peers blocked.
"""

from __future__ import annotations

import torch

from moe_runtime.distributed import wire
from moe_runtime.distributed.dispatcher import DispatchError, DispatchHandle
from moe_runtime.formats import COMBINE_INPUT_TYPES, DEEPEP_LL_FORMATS, DEEPEP_NORMAL, STANDARD
from moe_runtime.types import CombineInput, DeepEPLLCombineInput

_OUTPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def combine(handle: DispatchHandle, combine_input: CombineInput) -> torch.Tensor:
    """This rank's combined `[T_r, H]` float32 output. A collective, like `dispatch`."""
    hidden = combine_input.hidden_states
    problems = _problems(handle, combine_input)
    check = torch.tensor(
        [int(bool(problems)), _dtype_code(hidden), int(hidden.shape[-1]) if hidden.dim() else 0],
        dtype=torch.int64,
        device=hidden.device,
    )
    table = wire.gather_rows(check, handle.group).cpu().tolist()
    bad = [r for r, row in enumerate(table) if row[0]]
    if bad:
        mine = f"; rank {handle.rank}: " + "; ".join(problems) if problems else ""
        raise DispatchError(f"invalid combine input on rank(s) {bad}{mine}")
    if len({(row[1], row[2]) for row in table}) > 1:
        raise DispatchError(f"ranks disagree on the output dtype code and width: {table}")
    if handle.format == STANDARD:
        return _standard(handle, hidden)
    if handle.format in DEEPEP_LL_FORMATS:
        return _low_latency(handle, combine_input)
    return _rows(handle, hidden)


def _dtype_code(x: torch.Tensor) -> int:
    return _OUTPUT_DTYPES.index(x.dtype) if x.dtype in _OUTPUT_DTYPES else -1


def _problems(handle: DispatchHandle, combine_input: CombineInput) -> list[str]:
    expected = COMBINE_INPUT_TYPES[handle.format]
    if type(combine_input) is not expected:
        return [
            f"format {handle.format!r} combines {expected.__name__}, "
            f"got {type(combine_input).__name__}"
        ]
    hidden = combine_input.hidden_states
    if hidden.dtype not in _OUTPUT_DTYPES:
        return [f"expert outputs must be bf16, fp16 or fp32, got {hidden.dtype}"]
    h = handle.hidden_size
    if handle.format == STANDARD:
        rows = sum(handle.recv_rows)
        if tuple(hidden.shape) != (rows, h):
            return [f"standard output must be {(rows, h)}, got {tuple(hidden.shape)}"]
        return []
    if handle.format in DEEPEP_LL_FORMATS:
        assert isinstance(combine_input, DeepEPLLCombineInput)
        if hidden.dim() != 3 or hidden.shape[2] != h:
            return [f"low-latency output must be [L, C, {h}], got {tuple(hidden.shape)}"]
        ids = combine_input.topk_ids
        if handle.topk_ids is None or not torch.equal(ids.long(), handle.topk_ids):
            return ["combine input ids must be the sender's dispatched ids, unchanged"]
        return []
    readable = sum(handle.return_rows)
    is_mori = handle.format != DEEPEP_NORMAL
    rows_ok = hidden.shape[0] >= readable if is_mori else hidden.shape[0] == readable
    if hidden.dim() != 2 or hidden.shape[1] != h or not rows_ok:
        return [
            f"{handle.format} combine reads {readable} rows of width {h}, got an output of "
            f"shape {tuple(hidden.shape)}"
        ]
    return []


def _send_back(handle: DispatchHandle, rows: torch.Tensor) -> list[torch.Tensor]:
    """Send `rows` (blocks of `return_rows`, source-rank order) home; the blocks that arrive,
    one per destination rank, as float32."""
    layout = [(rows.dtype, tuple(rows.shape[1:]))]
    received = wire.exchange(wire.pack([rows]), handle.return_rows, handle.back_rows, handle.group)
    (values,) = wire.unpack(received, layout)
    return list(torch.split(values.float(), list(handle.back_rows)))


def _standard(handle: DispatchHandle, hidden: torch.Tensor) -> torch.Tensor:
    # Rows of the [T, H] output are the senders' tokens in rank order: block s goes to rank s.
    total = torch.zeros(handle.num_tokens, handle.hidden_size, device=hidden.device)
    for block in _send_back(handle, hidden):
        total += block
    return total


def _rows(handle: DispatchHandle, hidden: torch.Tensor) -> torch.Tensor:
    # MORI sends back only what its combine reads: per source block, its first return_rows.
    starts = [sum(handle.recv_rows[:s]) for s in range(handle.world)]
    kept = [hidden[start : start + n] for start, n in zip(starts, handle.return_rows, strict=True)]
    blocks = _send_back(handle, torch.cat(kept))
    total = torch.zeros(handle.num_tokens, handle.hidden_size, device=hidden.device)
    tokens = torch.split(handle.send_tokens, list(handle.send_rows))
    # One index_add_ per destination: unique indices within each, so the order of the additions
    # per token (destination rank order) is the emulation's on every device.
    for token_block, block, n in zip(tokens, blocks, handle.back_rows, strict=True):
        total.index_add_(0, token_block[:n], block)
    return total


def _low_latency(handle: DispatchHandle, combine_input: CombineInput) -> torch.Tensor:
    assert handle.recv_experts is not None and handle.recv_slots is not None
    assert handle.send_k is not None and handle.topk_ids is not None
    slab = combine_input.hidden_states
    # The expert output at each received pair's slot, back to the pair's sender.
    pair_rows = slab[handle.recv_experts, handle.recv_slots]
    returned = torch.cat(_send_back(handle, pair_rows))
    ids = handle.topk_ids
    assert isinstance(combine_input, DeepEPLLCombineInput)
    weights = combine_input.topk_weights
    num_tokens, top_k = ids.shape
    per_slot = torch.zeros(num_tokens, top_k, handle.hidden_size, device=slab.device)
    per_slot[handle.send_tokens, handle.send_k] = returned
    routed = (ids >= 0).unsqueeze(2)
    weighted = per_slot * weights.to(slab.device).unsqueeze(2)
    total = torch.zeros(num_tokens, handle.hidden_size, device=slab.device)
    # Slot by slot in order: the per-token order of the emulation's additions.
    for k in range(top_k):
        total = total + torch.where(routed[:, k], weighted[:, k], 0.0)
    return total

"""Moving rows between ranks: one `all_to_all_single` per exchange, every payload as bytes.

All tensors of one exchange travel together as one `uint8 [rows, bytes_per_row]` buffer, so a
dispatch costs one collective for its rows (plus one for the routing header) whatever its wire.
Bytes also sidestep what gloo cannot carry: it has no int16 and no float8 kernels (measured with
torch 2.13: "unsupported dtype"), while uint8 works on gloo (CPU and CUDA tensors) and NCCL alike.
Only the split-size form of `all_to_all_single` is used: the list form `dist.all_to_all` with
uneven sizes fails on gloo ("invalid tensor size").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def to_bytes(x: torch.Tensor) -> torch.Tensor:
    """`x [rows, ...]` as `uint8 [rows, row_bytes]` (a copy only if `x` is not contiguous)."""
    rows = x.shape[0]
    flat = x.contiguous().reshape(rows, -1)
    if flat.dtype == torch.uint8:
        return flat
    # A view with a wider element cannot be taken on a 0-column tensor; no bytes either way.
    if flat.shape[1] == 0:
        return torch.empty(rows, 0, dtype=torch.uint8, device=x.device)
    return flat.view(torch.uint8)


def from_bytes(raw: torch.Tensor, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of `to_bytes`: `raw uint8 [rows, row_bytes]` as `dtype [rows, *shape]`."""
    rows = raw.shape[0]
    return raw.contiguous().view(dtype).reshape(rows, *shape)


def pack(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Row-wise concatenation of the byte views of `parts` (all with the same number of rows)."""
    return torch.cat([to_bytes(p) for p in parts], dim=1)


def unpack(
    raw: torch.Tensor, layout: Sequence[tuple[torch.dtype, tuple[int, ...]]]
) -> list[torch.Tensor]:
    """Split `raw uint8 [rows, bytes]` back into tensors of the given (dtype, per-row shape)."""
    out = []
    start = 0
    for dtype, shape in layout:
        width = _row_bytes(dtype, shape)
        out.append(from_bytes(raw[:, start : start + width], dtype, shape))
        start += width
    if start != raw.shape[1]:
        raise ValueError(f"layout covers {start} bytes per row, the buffer has {raw.shape[1]}")
    return out


def _row_bytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count * torch.empty((), dtype=dtype).element_size()


def exchange(
    payload: torch.Tensor,
    send_rows: Sequence[int],
    recv_rows: Sequence[int],
    group: dist.ProcessGroup | None,
) -> torch.Tensor:
    """Send `payload[rows for rank d]` to every rank d (blocks in rank order), receive likewise.

    `payload` is `uint8 [sum(send_rows), B]`; returns `uint8 [sum(recv_rows), B]`, the block from
    rank s first for smaller s.
    """
    width = payload.shape[1]
    out = torch.empty(sum(recv_rows), width, dtype=torch.uint8, device=payload.device)
    dist.all_to_all_single(
        out,
        payload.contiguous(),
        output_split_sizes=list(recv_rows),
        input_split_sizes=list(send_rows),
        group=group,
    )
    return out


def gather_rows(row: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Every rank's `row` (int64 `[n]`, same n everywhere) as `[world, n]`, on every rank.

    An all-to-all of the replicated row rather than `all_gather`: one collective that behaves
    the same on gloo and NCCL, on CPU and CUDA tensors.
    """
    world = dist.get_world_size(group)
    send = row.reshape(1, -1).expand(world, -1).contiguous()
    out = torch.empty_like(send)
    dist.all_to_all_single(out, send, group=group)
    return out

"""What the rows a real dispatcher leaves undefined hold here: the emulation's poison, exactly.

Slab rows past `masked_m` and MORI rows past `total_recv` are undefined on a real transport. This
dispatcher fills them with `moe_runtime.stale`'s large finite values (seeded, so identical on every
rank and in the emulation, which draws them from the same module): a runner or combine that reads
them is visibly wrong, and the per-rank outputs compare bit for bit with the emulation's. They are
drawn on the CPU (half a second for a model-sized slab, measured on an H200 host), so each shape is
drawn once per process and cloned on the device after that.
"""

from __future__ import annotations

import functools

import torch

from moe_runtime import stale

_CACHED = 8


@functools.lru_cache(maxsize=_CACHED)
def _bf16(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return stale.bf16(shape, dtype, device)


@functools.lru_cache(maxsize=_CACHED)
def _fp8(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return stale.fp8(shape, device)


def bf16(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The emulation's garbage activations (magnitudes in [512, 1536), random signs)."""
    return _bf16(tuple(shape), dtype, torch.device(device)).clone()


def fp8(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The emulation's garbage fp8 activations (+-448)."""
    return _fp8(tuple(shape), torch.device(device)).clone()


@functools.lru_cache(maxsize=_CACHED)
def _mori_buffers(
    wire: str,
    rows: int,
    width: int,
    dtype: torch.dtype,
    scale_layout: tuple[int, torch.dtype] | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    # `stale.mori_buffers` reads only the templates' widths and dtypes.
    hidden = torch.empty(0, width, dtype=dtype)
    scale = None if scale_layout is None else torch.empty(0, scale_layout[0], dtype=scale_layout[1])
    return stale.mori_buffers(wire, rows, hidden, scale, device)


def mori_buffers(
    wire: str,
    rows: int,
    hidden: torch.Tensor,
    scale: torch.Tensor | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MORI's capacity buffers of `rows` rows, shaped and typed like the wire `hidden`/`scale`,
    full of the emulation's stale values."""
    layout = None if scale is None else (int(scale.shape[1]), scale.dtype)
    stale, stale_scale = _mori_buffers(
        wire, rows, int(hidden.shape[1]), hidden.dtype, layout, torch.device(device)
    )
    return stale.clone(), None if stale_scale is None else stale_scale.clone()


@functools.lru_cache(maxsize=_CACHED)
def _mori_routing(
    rank: int, capacity: int, top_k: int, num_experts: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = stale.generator()
    for _ in range(rank):
        stale.mori_routing(generator, capacity, top_k, num_experts)
    ids, weights = stale.mori_routing(generator, capacity, top_k, num_experts)
    return ids.to(device), weights.to(device)


def mori_routing(
    rank: int, capacity: int, top_k: int, num_experts: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stale MORI routing of rank `rank`: valid-looking global ids and positive weights.

    The emulation draws every rank's stale routing from one generator, rank 0 first; rank r
    replays the r draws before its own.
    """
    ids, weights = _mori_routing(rank, capacity, top_k, num_experts, torch.device(device))
    return ids.clone(), weights.clone()

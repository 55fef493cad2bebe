"""What the rows a real dispatcher leaves undefined hold here: the emulation's poison, exactly.

Slab rows past `masked_m` and MORI rows past `total_recv` are undefined on a real transport. This
dispatcher fills them with `moe_runtime.emulate`'s large finite values (seeded, so identical on
every rank and in the emulation): a runner or combine that reads them is visibly wrong, and the
per-rank outputs compare bit for bit with the emulation's. The values come from the emulation's
own helpers so that the two can never drift apart.
"""

from __future__ import annotations

import torch

from moe_runtime import emulate

# The emulation's seeded garbage generators (private there; shared here on purpose).
bf16 = emulate._garbage_bf16
fp8 = emulate._garbage_fp8
mori_buffers = emulate._mori_stale


def ll_scales(num_slabs: int, groups: int, capacity: int, device: torch.device) -> torch.Tensor:
    """Low-latency fp8 scales `[L, C, H/128]`, column-major in the last two dims as DeepEP
    allocates them (`[L, H/128, C]` transposed), every entry the emulation's garbage scale."""
    return torch.full(
        (num_slabs, groups, capacity), emulate._GARBAGE_FP8_SCALE, device=device
    ).transpose(1, 2)


def mori_routing(
    rank: int, capacity: int, top_k: int, num_experts: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stale MORI routing of rank `rank`: valid-looking global ids and positive weights.

    The emulation draws every rank's stale routing from one generator, rank 0 first; rank r
    replays the r draws before its own.
    """
    generator = emulate._garbage_generator()
    shape = (capacity, top_k)
    for _ in range(rank):
        torch.randint(0, num_experts, shape, generator=generator, dtype=torch.int32)
        torch.rand(shape, generator=generator)
    ids = torch.randint(0, num_experts, shape, generator=generator, dtype=torch.int32)
    weights = torch.rand(shape, generator=generator)
    return ids.to(device), weights.to(device)

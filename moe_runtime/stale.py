"""What a dispatch output holds outside the rows that arrived, and MORI's output around them.

Rows a real dispatcher leaves undefined (slab rows past `masked_m`, MORI rows past `total_recv`,
MORI EPv2's scale padding and combine arena) hold large finite values here, never zeros, so a
runner or combine that reads them is visibly wrong. The values are seeded, so the emulated
dispatchers (`moe_runtime.testing.emulate`) and the ones across real processes
(`moe_runtime.distributed`) fill them identically and their outputs compare bit for bit: both
draw them from here.
"""

from __future__ import annotations

import torch

from moe_runtime.formats import MORI_LL_FORMATS, MORI_V2_FORMATS
from moe_runtime.quant import E8M0, FP4X2, FP8, FP8_FNUZ, FP8_GROUP, fp8_max
from moe_runtime.types import (
    DispatchOutput,
    MoriEPLLDispatchOutput,
    MoriEPNormalDispatchOutput,
    MoriEPV2DispatchOutput,
)

# Magnitudes far above any real activation, still finite after dequantization.
_BF16 = 1024.0
_FP8 = fp8_max(FP8)
_FP8_SCALE = 1024.0
_FP4_BYTES = (0x77, 0xFF, 0x7F, 0xF7)  # nibble pairs of +-6.0, E2M1's largest magnitude
_E8M0 = 127 + 16  # scale 2**16
_SEED = 0x5EED
# MORI EPv2 moves each row's scales as int32 dwords in rows wider than the scales, and SGLang
# 0.5.23 hands them over as the view [:, :H/group] (token_dispatcher/moriep.py:1536-1545); its
# combine arena has rows of its own past the R the runner sees (moriep.py:1555-1558).
_V2_SCALE_PAD = 16
_V2_ARENA_EXTRA_ROWS = 3


def as_bytes(x: torch.Tensor) -> torch.Tensor:
    """A uint8 view of one-byte float tensors: PyTorch's CPU indexing lacks kernels for them."""
    if x.dtype in (FP8, FP8_FNUZ, FP4X2, E8M0):
        return x.view(torch.uint8)
    return x


def generator() -> torch.Generator:
    """The seeded generator every draw of stale values starts from."""
    return torch.Generator().manual_seed(_SEED)


def mori_routing(
    generator: torch.Generator, capacity: int, top_k: int, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One rank's stale MORI routing, the next draw of `generator` (CPU): int32 global ids and
    fp32 weights `[capacity, top_k]`, valid-looking (ids in range, weights positive) so that a
    runner which ignores total_recv computes those rows instead of failing on them."""
    shape = (capacity, top_k)
    ids = torch.randint(0, num_experts, shape, generator=generator, dtype=torch.int32)
    return ids, torch.rand(shape, generator=generator)


def bf16(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Values of magnitude in [512, 1536) with random signs."""
    draws = generator()
    magnitude = _BF16 * (0.5 + torch.rand(shape, generator=draws))
    sign = torch.randint(0, 2, shape, generator=draws) * 2 - 1
    return (magnitude * sign).to(device=device, dtype=dtype)


def fp8(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """+-448 (float8_e4m3fn's max) with random signs."""
    sign = torch.randint(0, 2, shape, generator=generator()) * 2 - 1
    return (sign * _FP8).to(device=device, dtype=FP8)


def _fp4(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Packed bytes of +-6.0 pairs, as float4_e2m1fn_x2."""
    choice = torch.randint(0, len(_FP4_BYTES), shape, generator=generator())
    table = torch.tensor(_FP4_BYTES, dtype=torch.uint8)
    return table[choice].to(device).view(FP4X2)


def ll_scales(
    num_slabs: int, hidden_size: int, capacity: int, device: torch.device
) -> torch.Tensor:
    """Low-latency fp8 scales `[L, C, H/128]`, column-major in the last two dims as DeepEP
    allocates them (`[L, H/128, C]` transposed), every entry the stale scale."""
    shape = (num_slabs, hidden_size // FP8_GROUP, capacity)
    return torch.full(shape, _FP8_SCALE, device=device).transpose(1, 2)


def mori_buffers(
    wire: str, rows: int, hidden: torch.Tensor, scale: torch.Tensor | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Capacity buffers of `rows` rows full of stale values, shaped and typed like the wire."""
    width = hidden.shape[1]
    if wire in ("fp8", "fp8_token") and scale is not None:
        stale_scale = torch.full((rows, scale.shape[1]), _FP8_SCALE, device=device)
        return fp8((rows, width), device), stale_scale
    if wire in ("fp4", "mxfp8") and scale is not None:
        stale_scale = torch.full(
            (rows, scale.shape[1]), _E8M0, dtype=torch.uint8, device=device
        ).view(scale.dtype)
        stale = _fp4 if wire == "fp4" else fp8
        return stale((rows, width), device), stale_scale
    return bf16((rows, width), hidden.dtype, device), None


def mori_output(
    format: str,
    hidden: torch.Tensor,
    scale: torch.Tensor | None,
    routing: tuple[torch.Tensor, torch.Tensor],
    origin_routing: tuple[torch.Tensor, torch.Tensor],
    total_recv: int,
    out_dtype: torch.dtype,
    recv_cap: int,
) -> DispatchOutput:
    """What a MORI format hands the runner from its capacity buffers: `hidden`, `scale` and
    `routing` (ids, weights) hold the `total_recv` arrived rows first, then stale ones;
    `origin_routing` is what this rank itself sent."""
    ll = format in MORI_LL_FORMATS
    output = (MoriEPLLDispatchOutput if ll else MoriEPNormalDispatchOutput)(
        hidden_states=hidden,
        hidden_states_scale=scale,
        topk_ids=routing[0],
        topk_weights=routing[1],
        num_recv_tokens_per_expert=torch.tensor(
            [total_recv], dtype=torch.int32, device=hidden.device
        ),
        origin_topk_ids=origin_routing[0],
        origin_topk_weights=origin_routing[1],
        out_dtype=out_dtype,
        recv_cap=recv_cap,
    )
    return as_mori_v2(output) if format in MORI_V2_FORMATS else output


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
    arena = bf16((rows + _V2_ARENA_EXTRA_ROWS, width), output.out_dtype, device)
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
        wide = torch.full((rows, cols + _V2_SCALE_PAD), _FP8_SCALE, device=scale.device)
        wide[:, :cols] = scale
        return wide[:, :cols]
    wide_bytes = torch.full(
        (rows, cols + _V2_SCALE_PAD), _E8M0, dtype=torch.uint8, device=scale.device
    )
    wide_bytes[:, :cols] = as_bytes(scale)
    return wide_bytes.view(scale.dtype)[:, :cols]

"""Quantize/dequantize helpers: fp8 (e4m3fn, e4m3fnuz), mxfp4 (E2M1 + e8m0), mxfp8 (e4m3 + e8m0)
and int4-in-int8.

These replicate the roundings AITER's `fused_moe` applies (docs/aiter_fused_moe.md): the reference
kernel uses them for its activation rounding points, tests use them to build quantized weights, and
generated runners call the two upscalers `dequantize_fp8_1x128` and `dequantize_mxfp4` on quantized
wires. Those two are branch-free straight-line tensor code with no host synchronisation, so they can
run inside a captured CUDA graph; everything else here validates its inputs and may branch.

Scale conventions: a quantized value `q` with scale `s` stands for `q * s`. A dynamic fp8 scale is
`amax / qmax` (a zero amax gives scale 1); an MX (mxfp4, mxfp8) scale is a power of two picked from
the group's amax by an `MxScale` rule, by default the smallest one with `amax / scale <= qmax`.
"""

from __future__ import annotations

import enum
import math

import torch

FP8 = torch.float8_e4m3fn
FP8_FNUZ = torch.float8_e4m3fnuz
FP4X2 = torch.float4_e2m1fn_x2
E8M0 = torch.float8_e8m0fnu

FP8_DTYPES = (FP8, FP8_FNUZ)
FP8_GROUP = 128
MXFP4_GROUP = 32
INT4_MAX = 7.0
# Largest E2M1 magnitude; the grid is {0, .5, 1, 1.5, 2, 3, 4, 6}.
FP4_MAX = 6.0
# Fitting an E2M1 nibble into an e4m3 byte (see `dequantize_mxfp4`) divides its value by 2**6.
_E2M1_IN_E4M3_FACTOR = 64.0


class MxScale(enum.Enum):
    """How an MX quantizer picks a group's scale `2**e` from the group's amax: AITER's quantizers
    changed rule between releases (`moe_runtime.kernels.rounding` says which release uses which).
    """

    # The smallest e with amax / 2**e <= qmax, so nothing saturates: AITER's `RoundUp`
    # (`ceil_pow2(amax / max_pos)`, csrc/include/mx_quant_utils.h, v0.1.16 onwards).
    ROUND_UP = "round-up"
    # amax rounded to a power of two (up from 1.5 times one), over the largest power of two
    # <= qmax: `f32_to_e8m0_scale(absMax) * 1/floor_pow2(MAX)` (csrc/kernels/quant_kernels.cu
    # and csrc/include/fp4_quant_utils.h up to v0.1.15.post3).
    NEAREST = "nearest"
    # fp8 only, e = 0: the values cast as they are, with unit e8m0 scales (`hidden_states.to(fp8)`
    # and `torch.ones` scales, aiter/fused_moe.py v0.1.9 to v0.1.14.post1).
    UNIT = "unit"


def fp8_max(dtype: torch.dtype) -> float:
    """Largest finite value of an fp8 dtype AITER uses: 448 for e4m3fn, 240 for e4m3fnuz."""
    if dtype == FP8:
        return 448.0
    if dtype == FP8_FNUZ:
        return 240.0
    raise ValueError(f"fp8 dtype must be torch.float8_e4m3fn or torch.float8_e4m3fnuz, got {dtype}")


def _dynamic_scale(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    # The divisor is a tensor, not the Python float: on CUDA, PyTorch turns a division by a host
    # scalar into a multiplication by its fp32 reciprocal, one ulp off the quotient for many amax.
    # Where amax / qmax is exact (2.625 / 448 = 3/512), bf16 inputs then land exactly on fp8
    # midpoints on CPU (ties to even) but just below them on CUDA, a whole fp8 step apart.
    # Tensor / tensor is the correctly rounded quotient on every device, and no host sync.
    scale = amax / torch.full_like(amax, qmax)
    # A zero amax (all-zero group) gets scale 1 so that dequantization never divides by zero.
    return torch.where(amax > 0, scale, torch.ones_like(scale))


def quantize_fp8_static(
    x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = FP8
) -> torch.Tensor:
    """Quantize `x` with a given fp32 scale (broadcast against `x`), saturating at the dtype's max.

    Rounding is the cast's round-to-nearest-even; values past `qmax` clamp rather than become NaN.
    """
    qmax = fp8_max(dtype)
    return (x.float() / scale).clamp(-qmax, qmax).to(dtype)


def _require_groups(x: torch.Tensor, group: int, what: str) -> None:
    if x.dim() < 1 or x.shape[-1] % group != 0:
        raise ValueError(
            f"{what} needs the last dimension to be a multiple of {group}, "
            f"got shape {tuple(x.shape)}"
        )


def quantize_fp8_per_tensor(
    x: torch.Tensor, dtype: torch.dtype = FP8
) -> tuple[torch.Tensor, torch.Tensor]:
    """One dynamic scale for the whole tensor: returns (q in `dtype`, scale [1] fp32)."""
    scale = _dynamic_scale(x.float().abs().amax().reshape(1), fp8_max(dtype))
    return quantize_fp8_static(x, scale, dtype), scale


def quantize_fp8_per_row(
    x: torch.Tensor, dtype: torch.dtype = FP8
) -> tuple[torch.Tensor, torch.Tensor]:
    """One dynamic scale per row over the last dim: returns (q, scale [..., N, 1] fp32)."""
    scale = _dynamic_scale(x.float().abs().amax(dim=-1, keepdim=True), fp8_max(dtype))
    return quantize_fp8_static(x, scale, dtype), scale


def quantize_fp8_1x128(
    x: torch.Tensor, dtype: torch.dtype = FP8
) -> tuple[torch.Tensor, torch.Tensor]:
    """One dynamic scale per 128 consecutive elements of the last dim.

    Returns (q, scale [..., M, K/128] fp32).
    """
    _require_groups(x, FP8_GROUP, "1x128 fp8 quantization")
    groups = torch.unflatten(x.float(), -1, (-1, FP8_GROUP))
    scale = _dynamic_scale(groups.abs().amax(dim=-1, keepdim=True), fp8_max(dtype))
    q = quantize_fp8_static(groups, scale, dtype).flatten(-2)
    return q, scale.squeeze(-1)


def quantize_fp8_128x128(
    w: torch.Tensor, dtype: torch.dtype = FP8
) -> tuple[torch.Tensor, torch.Tensor]:
    """One dynamic scale per 128x128 block of the last two dims: (q, scale [..., N/128, K/128])."""
    if w.dim() < 2 or w.shape[-1] % FP8_GROUP != 0 or w.shape[-2] % FP8_GROUP != 0:
        raise ValueError(
            "128x128 fp8 quantization needs the last two dimensions to be multiples of 128, "
            f"got shape {tuple(w.shape)}"
        )
    n, k = w.shape[-2], w.shape[-1]
    # [..., N/128, 128, K/128, 128]: block (i, j) is [..., i, :, j, :].
    columns = torch.unflatten(w.float(), -1, (k // FP8_GROUP, FP8_GROUP))
    blocks = torch.unflatten(columns, -3, (n // FP8_GROUP, FP8_GROUP))
    amax = blocks.abs().amax(dim=(-3, -1), keepdim=True)
    scale = _dynamic_scale(amax, fp8_max(dtype))
    q = quantize_fp8_static(blocks, scale, dtype).flatten(-2).flatten(-3, -2)
    return q, scale.squeeze(-1).squeeze(-2)


def dequantize_fp8_per_tensor(
    q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """`q * scale` for a per-tensor scale ([1] or any shape broadcasting against `q`)."""
    return (q.float() * scale.float()).to(out_dtype)


def dequantize_fp8_per_row(
    q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """`q * scale` for per-row scales [..., N, 1]."""
    return (q.float() * scale.float()).to(out_dtype)


def dequantize_fp8_1x128(
    q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Upscale fp8 `q [..., M, K]` with fp32 scales `[..., M, K/128]` into `out_dtype`.

    Hot path (generated runners call it on fp8 wires): three tensor ops, no branch, no host sync.
    """
    groups = torch.unflatten(q.to(torch.float32), -1, (-1, FP8_GROUP))
    return (groups * scale.unsqueeze(-1)).flatten(-2).to(out_dtype)


def dequantize_fp8_128x128(
    q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """`q * scale` for 128x128 block scales `[..., N/128, K/128]` of `q [..., N, K]`."""
    columns = torch.unflatten(q.float(), -1, (-1, FP8_GROUP))
    blocks = torch.unflatten(columns, -3, (-1, FP8_GROUP))
    full = blocks * scale.float().unsqueeze(-1).unsqueeze(-3)
    return full.flatten(-2).flatten(-3, -2).to(out_dtype)


def _e2m1_round(magnitude: torch.Tensor) -> torch.Tensor:
    """Round non-negative values to the E2M1 grid, ties to the even code, saturating at 6."""
    # The grid spacing is .5 below 2, 1 in [2, 4) and 2 from 4; on each stretch an even multiple of
    # the spacing is a code with a zero mantissa bit, so torch.round's half-to-even is the rule.
    step = torch.where(
        magnitude < 2.0,
        torch.full_like(magnitude, 0.5),
        torch.where(magnitude < 4.0, torch.ones_like(magnitude), torch.full_like(magnitude, 2.0)),
    )
    return (torch.round(magnitude / step) * step).clamp(max=FP4_MAX)


def _mx_exponent(groups: torch.Tensor, qmax: float, rule: MxScale) -> torch.Tensor:
    """Per group of the last dim, the exponent `e` of the scale `rule` picks (0 for a zero
    group), clamped to e8m0's range, as `[..., G, 1]` ints. Exact (no log2 rounding).

    qmax = q * 2**b and amax = m * 2**p with q, m in [0.5, 1). ROUND_UP: m * 2**(p-e) <= q * 2**b
    holds for e = p-b when m <= q, else e = p-b+1. NEAREST: amax rounds to 2**p from m >= 0.75
    (1.5 * 2**(p-1)), else to 2**(p-1); the largest power of two <= qmax is 2**(b-1)."""
    amax = groups.abs().amax(dim=-1, keepdim=True)
    q_mantissa, q_exponent = math.frexp(qmax)
    mantissa, exponent = torch.frexp(amax)
    if rule is MxScale.UNIT:
        return torch.zeros_like(exponent)
    up = mantissa > q_mantissa if rule is MxScale.ROUND_UP else mantissa >= 0.75
    e = exponent - q_exponent + up.to(exponent.dtype)
    return torch.where(amax > 0, e, torch.zeros_like(e)).clamp(-127, 127)


def quantize_mxfp4(
    x: torch.Tensor, rule: MxScale = MxScale.ROUND_UP
) -> tuple[torch.Tensor, torch.Tensor]:
    """MX fp4: returns (packed `float4_e2m1fn_x2 [..., K/2]`, scales `float8_e8m0fnu [..., K/32]`).

    Each 32 consecutive elements of the last dim share a power-of-two scale `2**e` that `rule`
    picks (by default the smallest with `amax / 2**e <= 6`; zero groups get `e = 0`). Elements
    round to nearest-even on the E2M1 grid; byte `i` holds element `2i` in its low nibble and
    `2i+1` in its high nibble (bit 3 of a nibble is the sign; zero is stored as +0).
    """
    _require_groups(x, MXFP4_GROUP, "mxfp4 quantization")
    if rule is MxScale.UNIT:
        raise ValueError("mxfp4 has no unit-scale rule: only AITER's fp8 casts used one")
    groups = torch.unflatten(x.float(), -1, (-1, MXFP4_GROUP))
    e = _mx_exponent(groups, FP4_MAX, rule)
    scaled = groups / torch.pow(2.0, e.float())
    magnitude = _e2m1_round(scaled.abs())
    # Code of an E2M1 magnitude: 2 * value up to 2 (0, .5, 1, 1.5, 2 -> 0..4), then one more per
    # grid step above 2 (3, 4, 6 -> 5, 6, 7). Arithmetic rather than a lookup table, so nothing is
    # copied from the host (the graph-safe reference quantizes with this).
    code = (
        (magnitude * 2).clamp(max=4.0)
        + (magnitude > 2.0).float()
        + (magnitude > 3.0).float()
        + (magnitude > 4.0).float()
    ).to(torch.uint8)
    code = code | ((scaled < 0) & (magnitude > 0)).to(torch.uint8) * 8
    pairs = torch.unflatten(code.flatten(-2), -1, (-1, 2))
    packed = (pairs[..., 0] | (pairs[..., 1] << 4)).contiguous().view(FP4X2)
    scale = (e.squeeze(-1) + 127).to(torch.uint8).view(E8M0)
    return packed, scale


def dequantize_mxfp4(
    packed: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Upscale fp4x2 `[..., K/2]` with e8m0 scales `[..., K/32]` into `out_dtype`.

    Hot path (generated runners call it on fp4 wires): branch-free, no host sync, no lookup table.
    Each E2M1 nibble `s e1 e0 m` is moved into an e4m3 byte as `s 0 0 e1 e0 m 0 0`, whose value is
    exactly the E2M1 value / 64 (normal and subnormal alike); two nibbles of a byte become the two
    little-endian bytes of an int16, so viewing it as fp8 gives the elements in order (low first).
    """
    byte = packed.view(torch.uint8).to(torch.int16)
    # Magnitudes: low nibble bits 0-2 -> 2-4, high nibble bits 4-6 -> 10-12 (one multiply, 4 + 64).
    magnitude = (byte & 0x77) * 68 & 0x1C1C
    # Signs: bit 3 -> 7, bit 7 -> 15 (multiply by 16 + 256; 0x8080 as a signed int16 is -32640).
    sign = (byte & 0x88) * 272 & -32640
    values = torch.unflatten((magnitude | sign).view(FP8).to(torch.float32), -1, (-1, MXFP4_GROUP))
    factor = scale.to(torch.float32) * _E2M1_IN_E4M3_FACTOR
    return (values * factor.unsqueeze(-1)).flatten(-2).to(out_dtype)


def quantize_mxfp8(
    x: torch.Tensor, dtype: torch.dtype = FP8, rule: MxScale = MxScale.ROUND_UP
) -> tuple[torch.Tensor, torch.Tensor]:
    """MX fp8: returns (`dtype [..., K]`, scales `float8_e8m0fnu [..., K/32]`).

    Each 32 consecutive elements of the last dim share a power-of-two scale `2**e` that `rule`
    picks: by default the smallest with `amax / 2**e <= qmax` (448 for e4m3fn; zero groups get
    `e = 0`), so nothing saturates. Elements are then cast as `quantize_fp8_static` does.
    """
    _require_groups(x, MXFP4_GROUP, "mxfp8 quantization")
    groups = torch.unflatten(x.float(), -1, (-1, MXFP4_GROUP))
    e = _mx_exponent(groups, fp8_max(dtype), rule)
    q = quantize_fp8_static(groups, torch.pow(2.0, e.float()), dtype).flatten(-2)
    return q, (e.squeeze(-1) + 127).to(torch.uint8).view(E8M0)


def dequantize_mxfp8(
    q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Upscale fp8 `[..., K]` with e8m0 scales `[..., K/32]` into `out_dtype`."""
    values = torch.unflatten(q.to(torch.float32), -1, (-1, MXFP4_GROUP))
    return (values * scale.to(torch.float32).unsqueeze(-1)).flatten(-2).to(out_dtype)


def quantize_int4_per_row(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 per row: returns (int8 values in [-7, 7], scale [..., N, 1] fp32 = amax/7)."""
    scale = _dynamic_scale(w.float().abs().amax(dim=-1, keepdim=True), INT4_MAX)
    q = torch.round(w.float() / scale).clamp(-INT4_MAX, INT4_MAX).to(torch.int8)
    return q, scale


def dequantize_int4_per_row(
    q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """`q * scale` for int4 values stored in int8 with per-row scales [..., N, 1]."""
    return (q.float() * scale.float()).to(out_dtype)

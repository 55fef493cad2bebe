"""The two wire upscalers as one Triton launch each, bit-identical to moe_runtime.quant's code.

Imported only when a runner with an upscaled wire loads on a GPU (`moe_runtime.kernels.upscale`);
the CPU path never imports Triton. Each function has the signature and the result of its torch
twin (`dequantize_fp8_1x128`, `dequantize_mxfp4`): the torch code takes 3 (fp8) or 13 (fp4)
launches, these take one, launched through the compiled kernel of the arguments' specialisation
(`moe_runtime.kernels.triton_launch`) rather than Triton's per-call `JITFunction.run`.

Bit-identity comes from doing the torch code's arithmetic, in its order, on the same fp32 values:
- fp8 codes are decoded to fp32 with integer ops exactly as c10 does (c10's `fp8e4m3fn_to_fp32`
  and `fp8_fnuz_to_fp32` bit routines, NaN payloads included), so e4m3fn and e4m3fnuz need no
  hardware fp8 support and give c10's NaNs;
- e8m0 scales become fp32 as c10's `Float8_e8m0fnu` does (code 0 is 2**-127, code 255 is the
  NaN 0x7F800001);
- the products are single fp32 multiplies (no fusion is possible: there is no add), and the
  cast to the output dtype rounds to nearest even, as torch's does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl

from moe_runtime.kernels import triton_launch
from moe_runtime.quant import FP8_FNUZ, FP8_GROUP, MXFP4_GROUP

_BLOCK = 1024
# Globals a @triton.jit function reads must be constexpr.
# 2**-9 and 2**-10: the weight of an e4m3fn / e4m3fnuz subnormal's mantissa step.
_FN_SUBNORMAL_STEP = tl.constexpr(2.0**-9)
_FNUZ_SUBNORMAL_STEP = tl.constexpr(2.0**-10)
# Fitting an E2M1 nibble into an e4m3 byte divides its value by 2**6 (moe_runtime.quant).
_E2M1_IN_E4M3_FACTOR = tl.constexpr(64.0)


@triton.jit
def _program_block(cols, inner, BLOCK: tl.constexpr):
    """This program's output row and block of columns, the part of them inside `cols`, and the
    row's place (r // inner, r % inner) in the [outer, inner, K] input views."""
    row = tl.program_id(0).to(tl.int64)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    return row, row // inner, row % inner, col, col < cols


@triton.jit
def _e4m3_to_f32(code, FNUZ: tl.constexpr):
    """c10's fp8 decoding on int32 codes 0..255, exact values: e4m3fn (fp8e4m3fn_to_fp32, NaN as
    0x7FF00000 | sign) or, with FNUZ, e4m3fnuz (exponent bias 8, 0x80 as the NaN 0x7F800001)."""
    sign = (code & 0x80) << 24
    exponent = (code >> 3) & 0xF
    mantissa = code & 0x7
    rebias = 119 if FNUZ else 120
    normal = (sign | ((exponent + rebias) << 23) | (mantissa << 20)).to(tl.float32, bitcast=True)
    # The sign goes in as a bit: Triton's unary minus is 0 - x, which turns -0.0 into +0.0.
    step = _FNUZ_SUBNORMAL_STEP if FNUZ else _FN_SUBNORMAL_STEP
    magnitude = (mantissa.to(tl.float32) * step).to(tl.int32, bitcast=True)
    subnormal = (magnitude | sign).to(tl.float32, bitcast=True)
    value = tl.where(exponent == 0, subnormal, normal)
    if FNUZ:
        nan = tl.full(code.shape, 0x7F800001, tl.int32).to(tl.float32, bitcast=True)
        is_nan = code == 0x80
    else:
        nan = (sign | 0x7FF00000).to(tl.float32, bitcast=True)
        is_nan = (code & 0x7F) == 0x7F
    return tl.where(is_nan, nan, value)


@triton.jit
def _fp8_1x128_kernel(
    q_ptr,
    scale_ptr,
    out_ptr,
    cols,
    inner,
    q_outer_stride,
    q_inner_stride,
    scale_outer_stride,
    scale_inner_stride,
    scale_col_stride,
    FNUZ: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row, outer_index, inner_index, col, inside = _program_block(cols, inner, BLOCK)
    q_at = q_ptr + outer_index * q_outer_stride + inner_index * q_inner_stride + col
    code = tl.load(q_at, mask=inside, other=0).to(tl.int32) & 0xFF
    value = _e4m3_to_f32(code, FNUZ)
    scale_row = scale_ptr + outer_index * scale_outer_stride + inner_index * scale_inner_stride
    scale_at = scale_row + (col // GROUP) * scale_col_stride
    scale = tl.load(scale_at, mask=inside, other=1.0).to(tl.float32)
    result = (value * scale).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * cols + col, result, mask=inside)


@triton.jit
def _e8m0_to_f32(code):
    """c10's Float8_e8m0fnu -> float: 2**(code - 127), code 0 -> 2**-127, 255 -> 0x7F800001."""
    bits = tl.where(code == 0, 0x00400000, code << 23)
    bits = tl.where(code == 0xFF, 0x7F800001, bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _mxfp4_kernel(
    packed_ptr,
    scale_ptr,
    out_ptr,
    cols,
    inner,
    packed_outer_stride,
    packed_inner_stride,
    scale_outer_stride,
    scale_inner_stride,
    scale_col_stride,
    GROUP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row, outer_index, inner_index, col, inside = _program_block(cols, inner, BLOCK)
    packed_row = packed_ptr + outer_index * packed_outer_stride + inner_index * packed_inner_stride
    byte = tl.load(packed_row + col // 2, mask=inside, other=0)
    nibble = (byte.to(tl.int32) >> ((col % 2) * 4)) & 0xF
    # The torch code's e4m3 byte for this nibble: sign to bit 7, magnitude bits to bits 2-4.
    value = _e4m3_to_f32(((nibble & 0x8) << 4) | ((nibble & 0x7) << 2), False)
    scale_row = scale_ptr + outer_index * scale_outer_stride + inner_index * scale_inner_stride
    code = tl.load(scale_row + (col // GROUP) * scale_col_stride, mask=inside, other=127)
    code = code.to(tl.int32) & 0xFF
    factor = _e8m0_to_f32(code) * _E2M1_IN_E4M3_FACTOR
    result = (value * factor).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * cols + col, result, mask=inside)


def _as_3d(x: torch.Tensor) -> torch.Tensor:
    """`x [..., A, B]` as `[outer, A, B]`: a view for 2-D and 3-D inputs whatever their strides
    (DeepEP's column-major [L, C, K/128] scales stay as they are: no copy)."""
    return x.reshape(-1, x.shape[-2], x.shape[-1])


# How each kernel is launched: through the compiled kernel of its specialisation
# (moe_runtime.kernels.triton_launch), not JITFunction.run's per-call binding.
FP8_LAUNCH = triton_launch.launcher(_fp8_1x128_kernel)
MXFP4_LAUNCH = triton_launch.launcher(_mxfp4_kernel)
Launch = Callable[..., None]


def _launch(
    launch: Launch, q: torch.Tensor, scale: torch.Tensor, out: torch.Tensor, *constants: Any
) -> None:
    """One launch over [outer * inner rows, column blocks]; every argument positional, in the
    kernel's order, constexprs last (the launcher's binder takes no keywords)."""
    outer, inner, _ = q.shape
    cols = out.shape[-1]
    q_strides = q.stride()
    scale_strides = scale.stride()
    launch(
        outer * inner,
        triton.cdiv(cols, _BLOCK),
        q,
        scale,
        out,
        cols,
        inner,
        q_strides[0],
        q_strides[1],
        scale_strides[0],
        scale_strides[1],
        scale_strides[2],
        *constants,
        _BLOCK,
    )


def upscale_fp8(
    launch: Launch, q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """`dequantize_fp8_1x128` with the launch given (benchmarks/triton_launch.py times both)."""
    out = torch.empty(q.shape, dtype=out_dtype, device=q.device)
    # Constexprs FNUZ, GROUP (BLOCK is added by _launch).
    _launch(launch, _as_3d(q).view(torch.uint8), _as_3d(scale), out, q.dtype == FP8_FNUZ, FP8_GROUP)
    return out


def upscale_mxfp4(
    launch: Launch, packed: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """`dequantize_mxfp4` with the launch given (benchmarks/triton_launch.py times both)."""
    out = torch.empty(
        (*packed.shape[:-1], packed.shape[-1] * 2), dtype=out_dtype, device=packed.device
    )
    _launch(
        launch,
        _as_3d(packed).view(torch.uint8),
        _as_3d(scale).view(torch.uint8),
        out,
        MXFP4_GROUP,
    )
    return out


def dequantize_fp8_1x128(
    q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """`moe_runtime.quant.dequantize_fp8_1x128` in one launch: fp8 `q [..., M, K]` (e4m3fn or
    e4m3fnuz, last dim contiguous, at most 3-D unless viewable) with fp32 scales
    `[..., M, K/128]` (any strides) into `out_dtype`, contiguous."""
    return upscale_fp8(FP8_LAUNCH, q, scale, out_dtype)


def dequantize_mxfp4(
    packed: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """`moe_runtime.quant.dequantize_mxfp4` in one launch: fp4x2 `[..., M, K/2]` (last dim
    contiguous) with e8m0 scales `[..., M, K/32]` (any strides) into `out_dtype [..., M, K]`."""
    return upscale_mxfp4(MXFP4_LAUNCH, packed, scale, out_dtype)

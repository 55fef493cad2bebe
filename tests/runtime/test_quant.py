"""moe_runtime.quant against hand-computed cases (every expected value below is derived by hand)."""

from __future__ import annotations

import ast
import inspect
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_runtime import quant
from tests.runtime.sync_guard import no_host_sync

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]

# E2M1 nibble codes 0..15 by hand: magnitude from bits 0-2, bit 3 is the sign.
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def _t(values: list[float] | list[list[float]], device: str) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


def test_fp8_max() -> None:
    assert quant.fp8_max(torch.float8_e4m3fn) == 448.0
    assert quant.fp8_max(torch.float8_e4m3fnuz) == 240.0
    with pytest.raises(ValueError, match=r"e4m3fn or torch\.float8_e4m3fnuz, got torch\.float16"):
        quant.fp8_max(torch.float16)


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_per_tensor_exact_grid(device: str) -> None:
    # amax 4 -> scale 4/448 = 1/112; x * 112 = 112, -224, 56, 448, all on the e4m3fn grid.
    x = _t([[1.0, -2.0], [0.5, 4.0]], device)
    q, scale = quant.quantize_fp8_per_tensor(x)
    assert q.dtype == torch.float8_e4m3fn
    assert scale.shape == (1,) and scale.dtype == torch.float32
    assert scale.item() == pytest.approx(1 / 112)
    assert q.float().tolist() == [[112.0, -224.0], [56.0, 448.0]]
    assert torch.equal(quant.dequantize_fp8_per_tensor(q, scale), x)


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_per_tensor_fnuz_uses_240(device: str) -> None:
    # amax 4 -> scale 4/240 = 1/60; x * 60 = 60, -120, 30, 240 (fnuz max).
    x = _t([[1.0, -2.0], [0.5, 4.0]], device)
    q, scale = quant.quantize_fp8_per_tensor(x, torch.float8_e4m3fnuz)
    assert q.dtype == torch.float8_e4m3fnuz
    assert scale.item() == pytest.approx(1 / 60)
    assert q.float().tolist() == [[60.0, -120.0], [30.0, 240.0]]
    assert torch.allclose(quant.dequantize_fp8_per_tensor(q, scale), x)


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_rounds_to_nearest_even_and_saturates(device: str) -> None:
    # amax 448 -> scale 1. In [8, 16) the e4m3 step is 1: 9.5 is a tie between 9 (mantissa 001)
    # and 10 (010) -> 10; 10.5 ties between 10 (010) and 11 (011) -> 10; 9.4 -> 9.
    x = _t([448.0, 9.5, 10.5, 9.4], device)
    q, scale = quant.quantize_fp8_per_tensor(x)
    assert scale.item() == 1.0
    assert q.float().tolist() == [448.0, 10.0, 10.0, 9.0]
    # A static scale that is too small saturates at +-448 instead of overflowing to NaN.
    sat = quant.quantize_fp8_static(_t([1000.0, -1000.0], device), _t([1.0], device))
    assert sat.float().tolist() == [448.0, -448.0]


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_zero_amax_gives_scale_one(device: str) -> None:
    q, scale = quant.quantize_fp8_per_tensor(torch.zeros(3, 4, device=device))
    assert scale.tolist() == [1.0]
    assert q.float().abs().sum().item() == 0.0


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_per_row(device: str) -> None:
    # Row scales: 3/448, 1 (zero row), 7/448. Row 0: 3 -> 448, -1.5 -> -224; row 2: -7 -> -448,
    # 0.5 -> 0.5 * 448 / 7 = 32.
    x = _t([[3.0, -1.5], [0.0, 0.0], [-7.0, 0.5]], device)
    q, scale = quant.quantize_fp8_per_row(x)
    assert scale.shape == (3, 1)
    assert scale.flatten().tolist() == pytest.approx([3 / 448, 1.0, 7 / 448])
    assert q.float().tolist() == [[448.0, -224.0], [0.0, 0.0], [-448.0, 32.0]]
    assert torch.allclose(quant.dequantize_fp8_per_row(q, scale), x)


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_1x128(device: str) -> None:
    # Group 0: 2.0 everywhere except element 5 = -4 -> scale 4/448, values 224 and -448.
    # Group 1: zeros -> scale 1.
    x = torch.zeros(1, 256, device=device)
    x[0, :128] = 2.0
    x[0, 5] = -4.0
    q, scale = quant.quantize_fp8_1x128(x)
    assert scale.shape == (1, 2)
    assert scale.tolist()[0] == pytest.approx([4 / 448, 1.0])
    assert q[0, 0].item() == 224.0 and q[0, 5].item() == -448.0
    assert q[0, 128:].float().abs().sum().item() == 0.0
    out = quant.dequantize_fp8_1x128(q, scale, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out.float(), x)


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_1x128_upscale_keeps_leading_dims(device: str) -> None:
    # DeepEP low-latency slabs [L, C, H] with scales [L, C, H/128]: scale 0.5 everywhere,
    # q = 3 -> 1.5.
    q = torch.full((2, 3, 256), 3.0, device=device).to(torch.float8_e4m3fn)
    scale = torch.full((2, 3, 2), 0.5, device=device)
    out = quant.dequantize_fp8_1x128(q, scale, torch.bfloat16)
    assert out.shape == (2, 3, 256)
    assert bool((out == 1.5).all())


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_128x128(device: str) -> None:
    # Block (0, 0) holds 8 at one spot and 1 elsewhere -> scale 8/448 (1 -> 56);
    # block (1, 0) holds 0.5 -> scale 0.5/448 (0.5 -> 448).
    w = torch.ones(256, 128, device=device)
    w[3, 7] = 8.0
    w[128:] = 0.5
    q, scale = quant.quantize_fp8_128x128(w)
    assert scale.shape == (2, 1)
    assert scale.flatten().tolist() == pytest.approx([8 / 448, 0.5 / 448])
    assert q[0, 0].item() == 56.0 and q[3, 7].item() == 448.0 and q[200, 100].item() == 448.0
    assert torch.allclose(quant.dequantize_fp8_128x128(q, scale), w)


@pytest.mark.parametrize("device", DEVICES)
def test_mxfp4_codes_nibble_order_and_ties(device: str) -> None:
    # amax 6 -> exponent 0 (e8m0 byte 127). Expected codes (ties to the even code):
    # 0->0, .25->0, .75->1.0 (2), 1.25->1.0 (2), 1.75->2 (4), 2.5->2 (4), 3.5->4 (6), 5->4 (6),
    # -6 -> 8|7 = 15, -0.1 -> +0 (0), 0.5 -> 1, 3 -> 5. Byte i = code(2i) | code(2i+1) << 4.
    row = [0.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -6.0, -0.1, 0.5, 3.0] + [0.0] * 20
    packed, scale = quant.quantize_mxfp4(_t([row], device))
    assert packed.dtype == torch.float4_e2m1fn_x2 and packed.shape == (1, 16)
    assert scale.dtype == torch.float8_e8m0fnu and scale.shape == (1, 1)
    assert scale.view(torch.uint8).tolist() == [[127]]
    assert packed.view(torch.uint8)[0, :6].tolist() == [0x00, 0x22, 0x44, 0x66, 0x0F, 0x51]
    out = quant.dequantize_mxfp4(packed, scale)
    assert out[0, :12].tolist() == [0, 0, 1, 1, 2, 2, 4, 4, -6, 0, 0.5, 3]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("amax", "byte"),
    [
        (6.0, 127),  # 6 / 2**0 = 6
        (6.5, 128),  # 6.5 > 6 -> 2**1 (3.25)
        (12.0, 128),  # 12 / 2 = 6 exactly
        (12.01, 129),  # just above -> 2**2
        (0.75, 124),  # 0.75 / 2**-3 = 6
        (0.0, 127),  # zero group -> scale 1
    ],
)
def test_mxfp4_scale_exponent_rounds_up(device: str, amax: float, byte: int) -> None:
    x = torch.zeros(1, 32, device=device)
    x[0, 0] = amax
    _, scale = quant.quantize_mxfp4(x)
    assert scale.view(torch.uint8).item() == byte


# amax -> the e8m0 byte of AITER's older rule, NEAREST, derived by hand from its HIP quantizer
# (`f32_to_e8m0_scale(absMax) * 0.25`: amax to the power of two below it, or above it from 1.5
# times that power; then / 4), the default rule's byte, and amax as NEAREST stores it.
MXFP4_NEAREST = [
    (1.5, 126, 125, 1.5),  # 1.5 -> 2, / 4 = 2**-1 (code 3); round-up: 1.5 / 2**-2 = 6 fits
    (3.0, 127, 126, 3.0),  # 3 -> 4 -> 2**0; round-up 3 / 2**-1 = 6
    (0.1875, 123, 122, 0.1875),  # 1.5 * 2**-3 -> 2**-2, / 4 = 2**-4; round-up: / 2**-5 = 6
    (1.4, 125, 125, 1.5),  # 1.4 -> 1 -> 2**-2: 5.6 rounds to 6; round-up: the same
    (1.6, 126, 126, 1.5),  # 1.6 -> 2 -> 2**-1: 3.2 rounds to 3; round-up: 6.4 > 6, the same
    (6.0, 128, 127, 6.0),  # 6 = 1.5 * 4 -> 8 -> 2**1; round-up 6 / 2**0 = 6
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("amax", "nearest", "round_up", "stored"), MXFP4_NEAREST)
def test_mxfp4_nearest_scale_is_aiter_up_to_v0_1_15(
    device: str, amax: float, nearest: int, round_up: int, stored: float
) -> None:
    x = torch.zeros(1, 32, device=device)
    x[0, 0] = amax
    packed, scale = quant.quantize_mxfp4(x, quant.MxScale.NEAREST)
    assert scale.view(torch.uint8).item() == nearest
    assert quant.dequantize_mxfp4(packed, scale)[0, 0].item() == stored
    assert quant.quantize_mxfp4(x)[1].view(torch.uint8).item() == round_up
    with pytest.raises(ValueError, match="no unit-scale rule"):
        quant.quantize_mxfp4(x, quant.MxScale.UNIT)


@pytest.mark.parametrize("device", DEVICES)
def test_mxfp8_older_scales_by_hand(device: str) -> None:
    """AITER's other mxfp8 scales: NEAREST (v0.1.15, `f32_to_e8m0_scale(absMax) / 256`) and UNIT
    (v0.1.9 to v0.1.14, `x.to(fp8)` with unit scales), by hand, for groups with amax 1.6 (nearest
    2 -> 2**-7; round-up 1.6 * 2**8 = 409.6 <= 448 -> 2**-8), 1.8 (2 -> 2**-7; round-up 460.8 >
    448 -> 2**-7 too), 1.4 (1 -> 2**-8; round-up 2**-8) and 2**-10 (both 2**-18; UNIT leaves it
    a subnormal e4m3)."""
    rows = [1.6, 1.8, 1.4, 2**-10]
    x = torch.zeros(1, 32 * len(rows), device=device)
    for group, amax in enumerate(rows):
        x[0, 32 * group] = amax
    bytes_of = {
        rule: quant.quantize_mxfp8(x, rule=rule)[1].view(torch.uint8).cpu().tolist()[0]
        for rule in quant.MxScale
    }
    assert bytes_of[quant.MxScale.NEAREST] == [120, 120, 119, 109]
    assert bytes_of[quant.MxScale.ROUND_UP] == [119, 120, 119, 109]
    assert bytes_of[quant.MxScale.UNIT] == [127] * 4
    q, scale = quant.quantize_mxfp8(x, rule=quant.MxScale.UNIT)
    # Unit scales keep the values as e4m3 casts them: 1.6 -> 1.625 (spacing 1/8 in [1, 2)), and
    # 2**-10 a subnormal (spacing 2**-9): ties to even, 0. Scaled, both keep three mantissa bits.
    back = quant.dequantize_mxfp8(q, scale)[0]
    assert back[0].item() == 1.625 and back[96].item() == 0.0
    scaled = quant.dequantize_mxfp8(*quant.quantize_mxfp8(x))[0]
    assert scaled[0].item() == 1.625 and scaled[96].item() == 2**-10


@pytest.mark.parametrize("device", DEVICES)
def test_mxfp4_dequantize_every_byte(device: str) -> None:
    # All 256 bytes at scale 2**0, then the same at scale 2**3 (e8m0 byte 130).
    packed = torch.arange(256, dtype=torch.uint8, device=device).reshape(16, 16)
    expected = torch.tensor([[E2M1[b & 15], E2M1[b >> 4]] for b in range(256)]).reshape(16, 32)
    ones = torch.full((16, 1), 127, dtype=torch.uint8, device=device).view(torch.float8_e8m0fnu)
    out = quant.dequantize_mxfp4(packed.view(torch.float4_e2m1fn_x2), ones)
    assert torch.equal(out.cpu(), expected)
    eights = torch.full((16, 1), 130, dtype=torch.uint8, device=device).view(torch.float8_e8m0fnu)
    out8 = quant.dequantize_mxfp4(packed.view(torch.float4_e2m1fn_x2), eights, torch.bfloat16)
    assert out8.dtype == torch.bfloat16
    assert torch.equal(out8.float().cpu(), expected * 8)


@pytest.mark.parametrize("device", DEVICES)
def test_mxfp4_round_trip_with_scale(device: str) -> None:
    # Group 0: amax 12 -> scale 2: 12 -> 6 (code 7), 1 -> 0.5 (code 1), -3 -> -1.5 (code 11).
    # Group 1 (elements 32..63): amax 0.75 -> scale 1/8: 0.75 -> 6, 0.0625 -> 0.5.
    x = torch.zeros(1, 64, device=device)
    x[0, :3] = torch.tensor([12.0, 1.0, -3.0])
    x[0, 32:34] = torch.tensor([0.75, 0.0625])
    packed, scale = quant.quantize_mxfp4(x)
    assert scale.view(torch.uint8).tolist() == [[128, 124]]
    assert packed.view(torch.uint8)[0, :2].tolist() == [0x17, 0x0B]
    assert torch.equal(quant.dequantize_mxfp4(packed, scale), x)


@pytest.mark.parametrize("device", DEVICES)
def test_int4_per_row(device: str) -> None:
    # Row 0: amax 7 -> scale 1: 7, -3.5 -> -4 (tie to even), 1. Row 1: zeros -> scale 1.
    # Row 2: amax 14 -> scale 2: 14 -> 7, 1 -> 0.5 -> 0 (tie to even), -14 -> -7.
    w = _t([[7.0, -3.5, 1.0], [0.0, 0.0, 0.0], [14.0, 1.0, -14.0]], device)
    q, scale = quant.quantize_int4_per_row(w)
    assert q.dtype == torch.int8
    assert q.tolist() == [[7, -4, 1], [0, 0, 0], [7, 0, -7]]
    assert scale.flatten().tolist() == [1.0, 1.0, 2.0]
    assert quant.dequantize_int4_per_row(q, scale).tolist() == [[7, -4, 1], [0, 0, 0], [14, 0, -14]]


@pytest.mark.parametrize("device", DEVICES)
def test_group_size_errors(device: str) -> None:
    with pytest.raises(ValueError, match="multiple of 128, got shape \\(2, 100\\)"):
        quant.quantize_fp8_1x128(torch.ones(2, 100, device=device))
    with pytest.raises(ValueError, match="multiples of 128, got shape \\(130, 128\\)"):
        quant.quantize_fp8_128x128(torch.ones(130, 128, device=device))
    with pytest.raises(ValueError, match="multiple of 32, got shape \\(1, 40\\)"):
        quant.quantize_mxfp4(torch.ones(1, 40, device=device))


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 4),
    groups=st.integers(1, 3),
    log_scale=st.integers(-6, 6),
    seed=st.integers(0, 2**16),
)
def test_round_trip_error_bounds(rows: int, groups: int, log_scale: int, seed: int) -> None:
    """Property: every quantizer's error stays within half a grid step at the element's scale."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 128 * groups, generator=g) * 2.0**log_scale
    amax_row = x.abs().amax(dim=-1, keepdim=True)
    # e4m3: 3 mantissa bits -> relative error <= 2**-4 of the value; plus subnormal spacing
    # 2**-9 at the group's scale (amax/448).
    q, s = quant.quantize_fp8_per_row(x)
    err = (quant.dequantize_fp8_per_row(q, s) - x).abs()
    assert bool((err <= x.abs() * 2**-4 + amax_row / 448 * 2**-9 * 1.01).all())
    q, s = quant.quantize_fp8_1x128(x)
    assert bool(((quant.dequantize_fp8_1x128(q, s) - x).abs() <= x.abs() * 2**-4 + 1e-30 +
                 amax_row / 448 * 2**-9 * 1.01).all())
    # E2M1: grid steps are .5 / 1 / 2 at the group scale (<= amax/3 since amax/scale > 3);
    # half a step is at most 1 scaled unit.
    packed, e8m0 = quant.quantize_mxfp4(x)
    scale = e8m0.float().repeat_interleave(32, dim=-1)
    err = (quant.dequantize_mxfp4(packed, e8m0) - x).abs()
    assert bool((err <= scale * 1.0 + 1e-30).all())
    assert bool((x.abs() / scale <= 6.0).all())


def _function_body(fn: object) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(fn)))  # type: ignore[arg-type]


@pytest.mark.parametrize("fn", [quant.dequantize_fp8_1x128, quant.dequantize_mxfp4])
def test_upscalers_are_straight_line(fn: object) -> None:
    """The two wire upscalers run in generated hot paths: no branch, loop or comprehension."""
    forbidden = (ast.If, ast.IfExp, ast.For, ast.While, ast.Try, ast.Match, ast.BoolOp,
                 ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
    found = [type(node).__name__ for node in ast.walk(_function_body(fn))
             if isinstance(node, forbidden)]
    assert found == []


@pytest.mark.parametrize("device", DEVICES)
def test_upscalers_do_not_sync(device: str) -> None:
    q, s = quant.quantize_fp8_1x128(torch.randn(4, 256, device=device))
    p, e = quant.quantize_mxfp4(torch.randn(4, 64, device=device))
    with no_host_sync(device):
        quant.dequantize_fp8_1x128(q, s, torch.bfloat16)
        quant.dequantize_mxfp4(p, e, torch.bfloat16)


@pytest.mark.parametrize("device", DEVICES)
def test_mxfp8_scales_by_hand(device: str) -> None:
    """Groups of 32 with amax 448 (e = 0), 449 (e = 1: 449 > 448), 1.0 (e = -8: 1/2**-8 = 256 <=
    448 < 512), 0 (e = 0), and one 1.75 * 2**-8 (e = -16: 448 = 1.75 * 2**8)."""
    rows = [448.0, 449.0, 1.0, 0.0, 1.75 * 2**-8]
    x = torch.zeros(1, 32 * len(rows), device=device)
    for group, amax in enumerate(rows):
        x[0, 32 * group] = amax
        x[0, 32 * group + 1] = -amax / 4
    q, scale = quant.quantize_mxfp8(x)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float8_e8m0fnu
    assert scale.view(torch.uint8).cpu().tolist() == [[127, 128, 119, 127, 111]]
    back = quant.dequantize_mxfp8(q, scale)
    # At scale 2: 449 / 2 = 224.5 rounds to 224 (e4m3 spacing 16 in [128, 256)), back 448; and
    # -449 / 8 = -56.125 rounds to -56 (spacing 4 in [32, 64)), back -112. The rest are exact.
    expected = x.clone()
    expected[0, 32], expected[0, 33] = 448.0, -112.0
    assert torch.equal(back, expected)
    # Negative control: a scale one power of two too small saturates the 449 group.
    assert not torch.equal(quant.dequantize_mxfp8(q, scale.view(torch.uint8).sub(1).view(
        torch.float8_e8m0fnu)), expected)
    with pytest.raises(ValueError, match="mxfp8 quantization"):
        quant.quantize_mxfp8(torch.ones(2, 33, device=device))

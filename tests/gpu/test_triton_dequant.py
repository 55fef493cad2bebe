"""CUDA only (run on the H200, see benchmarks/RESULTS.md): the Triton wire upscalers are bit-exact
to moe_runtime.quant's torch code on the same GPU, over every code and scale, every output dtype,
every layout a runner passes, and inside every generated runner that upscales; they are what
runners bind on a GPU; a low-latency runner refuses a first call inside a graph capture."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import generated
from moe_runtime import quant
from moe_runtime.kernels import upscale
from moe_runtime.testing import emulate
from moe_runtime.testing.recording import RecordingKernel
from moe_runtime.testing.weights import make_expert_weights
from tests.runners.harness import layer_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton path needs a GPU")

GENERATED = Path(generated.__file__).parent
OUT_DTYPES = [torch.bfloat16, torch.float16, torch.float32]
Upscaler = Callable[[torch.Tensor, torch.Tensor, torch.dtype], torch.Tensor]


def triton_twin(name: upscale.UpscalerName) -> Upscaler:
    bound = upscale.bind(name, torch.device("cuda"))
    assert bound.__module__ == upscale.TRITON_MODULE, upscale.describe()
    return bound


def bits(x: torch.Tensor) -> torch.Tensor:
    """The raw bits of `x` (NaN payloads included), as integers of the same width."""
    return x.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[x.element_size()])


def assert_bit_identical(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    assert got.is_contiguous()
    differ = bits(got) != bits(want)
    assert not bool(differ.any()), (
        f"{int(differ.sum())} elements differ, first at {differ.nonzero()[0].tolist()}"
    )


def every_fp8_code(dtype: torch.dtype, rows: int, groups: int) -> torch.Tensor:
    """[rows, 128 * groups] fp8: every one of the 256 codes in every row (NaNs included)."""
    codes = torch.arange(256, dtype=torch.uint8, device="cuda").roll(7)
    row = codes.repeat(groups // 2)
    return torch.stack([row.roll(3 * r) for r in range(rows)]).view(dtype)


# fp32 scales: ordinary, exact powers of two, subnormal products, overflow to inf, zero, negative,
# and the NaN and infinity a garbage row may carry.
SCALES = [1.0, 2.0**-7, 3.0e-3, 1.7e-38, 1.0e-45, 3.0e38, 0.0, -0.5, float("inf"), float("nan")]


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("fp8", [quant.FP8, quant.FP8_FNUZ])
def test_fp8_every_code_and_scale(fp8: torch.dtype, out_dtype: torch.dtype) -> None:
    groups = 4
    q = every_fp8_code(fp8, len(SCALES) * 3, groups)
    scale = torch.tensor(SCALES, device="cuda").repeat_interleave(3)
    scale = scale[:, None].expand(-1, groups).contiguous()
    scale[1::3] *= torch.rand(scale[1::3].shape, device="cuda") + 0.5  # per-group variety
    want = quant.dequantize_fp8_1x128(q, scale, out_dtype)
    assert_bit_identical(triton_twin("dequantize_fp8_1x128")(q, scale, out_dtype), want)
    # Negative control: the comparison sees a change of one group's scale. (A one-ulp fp32 nudge
    # vanishes in bf16 and fp16 outputs, as the H200 run showed; a quarter does not.)
    nudged = scale.clone()
    nudged[0, 0] *= 1.25
    assert bool((bits(quant.dequantize_fp8_1x128(q, nudged, out_dtype)) != bits(want)).any())


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
def test_mxfp4_every_byte_and_every_e8m0_scale(out_dtype: torch.dtype) -> None:
    # Row r: all 256 bytes (512 elements, 16 groups of 32), every group scaled by e8m0 code r.
    packed = torch.arange(256, dtype=torch.uint8, device="cuda").repeat(256, 1)
    packed = torch.stack([row.roll(r) for r, row in enumerate(packed)]).view(quant.FP4X2)
    codes = torch.arange(256, dtype=torch.uint8, device="cuda")[:, None].expand(-1, 16)
    scale = codes.contiguous().view(quant.E8M0)
    want = quant.dequantize_mxfp4(packed, scale, out_dtype)
    assert_bit_identical(triton_twin("dequantize_mxfp4")(packed, scale, out_dtype), want)
    # Per-group scale variety within a row as well.
    mixed = torch.randint(0, 256, (256, 16), dtype=torch.uint8, device="cuda").view(quant.E8M0)
    want = quant.dequantize_mxfp4(packed, mixed, out_dtype)
    assert_bit_identical(triton_twin("dequantize_mxfp4")(packed, mixed, out_dtype), want)


def test_the_layouts_runners_pass() -> None:
    fp8 = triton_twin("dequantize_fp8_1x128")
    fp4 = triton_twin("dequantize_mxfp4")
    x = torch.randn(3, 5, 512, device="cuda") * 4
    q, s = quant.quantize_fp8_1x128(x)
    # DeepEP low latency: [L, C, H] slabs with column-major [L, C, H/128] scales, read in place.
    column_major = s.transpose(1, 2).contiguous().transpose(1, 2)
    assert not column_major.is_contiguous()
    want = quant.dequantize_fp8_1x128(q, column_major, torch.bfloat16)
    assert_bit_identical(fp8(q, column_major, torch.bfloat16), want)
    # SGLang 0.5.23's MORI scales: a [R, H/128] view into a wider buffer.
    flat_q = q.reshape(15, 512)
    wide = torch.zeros(15, 9, device="cuda")
    wide[:, :4] = s.reshape(15, 4)
    view = wide[:, :4]
    assert_bit_identical(
        fp8(flat_q, view, torch.bfloat16), quant.dequantize_fp8_1x128(flat_q, view, torch.bfloat16)
    )
    packed, e = quant.quantize_mxfp4(x.reshape(15, 512))
    wide_e = torch.zeros(15, 20, dtype=torch.uint8, device="cuda")
    wide_e[:, :16] = e.view(torch.uint8)
    e_view = wide_e[:, :16].view(quant.E8M0)
    assert_bit_identical(
        fp4(packed, e_view, torch.bfloat16), quant.dequantize_mxfp4(packed, e_view, torch.bfloat16)
    )


def _upscalers() -> dict[tuple[str, str, str], str]:
    """Every runner that upscales its wire, and the upscaler its module binds."""
    bound = re.compile(r'bind_upscaler\("(\w+)"')
    found = {}
    for key in sorted(generated.RUNNERS):
        match = bound.search((GENERATED / f"{generated.RUNNERS[key]}.py").read_text())
        if match:
            found[key] = match[1]
    return found


UPSCALERS = _upscalers()
# The wires with a one-launch Triton kernel (fp8 1x128, mxfp4); the mxfp8 and per-row fp8 wires'
# upscalers are one multiply each and stay torch code on every device (moe_runtime.kernels.upscale).
WITH_TRITON = [key for key, name in UPSCALERS.items() if name in upscale._TRITON]
TORCH_ONLY = [key for key, name in UPSCALERS.items() if name not in upscale._TRITON]


def test_every_upscaling_runner_is_listed() -> None:
    formats = {key[2] for key in WITH_TRITON}
    assert {"deepep_ll_fp8", "mori_normal_fp8", "mori_ll_fp8", "mori_normal_fp4"} <= formats
    assert len(WITH_TRITON) >= 20
    assert {key[2] for key in TORCH_ONLY} >= {"mori_normal_mxfp8", "mori_normal_fp8_token"}


@pytest.mark.parametrize("key", TORCH_ONLY, ids="/".join)
def test_a_runner_of_a_wire_without_a_triton_kernel_binds_the_torch_code_on_a_gpu(
    key: tuple[str, str, str],
) -> None:
    _, quant_method, _ = key
    weights = make_expert_weights(quant_method, 4, 256, 128, seed=0, device="cuda")
    runner = generated.select(*key)(
        layer_config(quant_method, top_k=3), weights, kernel=RecordingKernel()
    )
    assert runner._dequantize is upscale._TORCH[UPSCALERS[key]]


@pytest.mark.parametrize("key", WITH_TRITON, ids="/".join)
def test_every_upscaling_runner_binds_triton_and_passes_the_torch_result(
    key: tuple[str, str, str],
) -> None:
    _, quant_method, dispatch = key
    weights = make_expert_weights(quant_method, 4, 256, 128, seed=0, device="cuda")
    batch = emulate.make_batch(12, 256, 8, 3, ep_size=2, seed=3, device="cuda")
    output = emulate.dispatch(batch, dispatch, max_tokens_per_rank=8).outputs[0]
    config = layer_config(quant_method, top_k=3)
    runner_type = generated.select(*key)
    triton_kernel, torch_kernel = RecordingKernel(), RecordingKernel()
    with_triton = runner_type(config, weights, kernel=triton_kernel)
    assert with_triton._dequantize.__module__ == upscale.TRITON_MODULE
    with_torch = runner_type(config, weights, kernel=torch_kernel)
    with_torch._dequantize = upscale._TORCH[with_triton._dequantize.__name__]
    with_triton(output)
    with_torch(output)
    got = triton_kernel.calls[0]["hidden_states"]
    want = torch_kernel.calls[0]["hidden_states"]
    assert_bit_identical(got, want)
    # Negative control: the comparison sees one flipped bit.
    flipped = want.clone()
    bits(flipped).view(-1)[0] ^= 1
    assert bool((bits(flipped) != bits(got)).any())


def test_a_first_low_latency_call_inside_a_capture_is_refused() -> None:
    key = ("deepep", "unquant", "deepep_ll")
    weights = make_expert_weights("unquant", 4, 256, 128, seed=0, device="cuda")
    batch = emulate.make_batch(6, 256, 8, 2, ep_size=2, seed=1, device="cuda")
    output = emulate.dispatch(batch, "deepep_ll", max_tokens_per_rank=3).outputs[0]
    config = layer_config("unquant", top_k=2)
    out = torch.empty(24, 256, dtype=torch.bfloat16, device="cuda")

    def stub(*args: object, **kwargs: object) -> torch.Tensor:
        return out

    runner = generated.select(*key)(config, weights, kernel=stub)  # type: ignore[arg-type]
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="call the runner once before capturing"):
        with torch.cuda.graph(graph):
            runner(output)
    # After a warm-up call the same capacity captures.
    runner(output)
    with torch.cuda.graph(torch.cuda.CUDAGraph()):
        runner(output)

"""CUDA only: the upscalers' fast launch (moe_runtime.kernels.triton_launch) is what is bound,
launches a remembered specialisation without JITFunction.run, re-specialises when shapes,
strides, alignment or dtypes change between calls (each result bit-identical to the torch code),
follows the current stream (a CUDA graph captures it) and gives the profiler hooks Triton's path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from moe_runtime import quant
from tests.gpu.test_triton_dequant import assert_bit_identical, bits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton path needs a GPU")

if torch.cuda.is_available():
    from triton import knobs

    from moe_runtime.kernels import triton_dequant, triton_launch


@pytest.fixture
def jit_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Counts the calls that go through JITFunction.run (a launch or a warm-up) per kernel."""
    runs: list[str] = []
    for kernel in (triton_dequant._fp8_1x128_kernel, triton_dequant._mxfp4_kernel):
        original = kernel.run

        def counted(
            *args: Any, _original: Any = original, _name: str = kernel.__name__, **kwargs: Any
        ) -> Any:
            runs.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(kernel, "run", counted)
    yield runs


def _fp8_inputs(rows: int, cols: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = (torch.randn(rows, cols, generator=generator) * 4).cuda()
    return quant.quantize_fp8_1x128(x)


def test_the_fast_launch_is_bound() -> None:
    assert isinstance(triton_dequant.FP8_LAUNCH, triton_launch.SpecialisedLaunch)
    assert isinstance(triton_dequant.MXFP4_LAUNCH, triton_launch.SpecialisedLaunch)


def test_a_specialisation_seen_before_skips_jit_function_run(jit_runs: list[str]) -> None:
    q, s = _fp8_inputs(7, seed=1)
    fp8 = triton_dequant.dequantize_fp8_1x128
    fp8(q, s, torch.bfloat16)  # compiles or finds this specialisation: at most one JIT call
    before = len(jit_runs)
    assert before <= 1
    for seed in range(2, 6):  # same shapes and dtypes, other values
        q, s = _fp8_inputs(7, seed=seed)
        assert_bit_identical(
            fp8(q, s, torch.bfloat16), quant.dequantize_fp8_1x128(q, s, torch.bfloat16)
        )
    assert len(jit_runs) == before
    # Negative control: the counter sees Triton's own launch path.
    triton_dequant.upscale_fp8(triton_dequant.FP8_LAUNCH.jit, q, s, torch.bfloat16)
    assert len(jit_runs) == before + 1


def _layouts() -> list[tuple[str, torch.Tensor, torch.Tensor, torch.dtype]]:
    """fp8 inputs whose Triton specialisations differ: one row (inner == 1 is a constexpr), rows
    not a multiple of 16, slabs with column-major scales, scales in a wider buffer, a q that is
    not 16-byte aligned, another output dtype, e4m3fnuz codes."""
    q, s = _fp8_inputs(15, seed=7)
    one_q, one_s = _fp8_inputs(1, seed=8)
    slab_q = q[:12].reshape(3, 4, 512)
    slab_s = s[:12].reshape(3, 4, 4).transpose(1, 2).contiguous().transpose(1, 2)
    wide = torch.zeros(15, 16, device="cuda")  # a row stride divisible by 16, unlike 4
    wide[:, :4] = s
    unaligned = torch.empty(15 * 512 + 1, dtype=torch.uint8, device="cuda")[1:]
    unaligned.copy_(q.view(torch.uint8).reshape(-1))
    unaligned_q = unaligned.view(quant.FP8).reshape(15, 512)
    assert unaligned_q.data_ptr() % 16 != 0
    fnuz = q.view(torch.uint8).clone().view(quant.FP8_FNUZ)
    return [
        ("15 rows", q, s, torch.bfloat16),
        ("1 row", one_q, one_s, torch.bfloat16),
        ("slab, column-major scales", slab_q, slab_s, torch.bfloat16),
        ("scales in a wider buffer", q, wide[:, :4], torch.bfloat16),
        ("unaligned q", unaligned_q, s, torch.bfloat16),
        ("fp16 out", q, s, torch.float16),
        ("fp32 out", q, s, torch.float32),
        ("e4m3fnuz", fnuz, s, torch.bfloat16),
    ]


def _recorded(q: torch.Tensor, s: torch.Tensor, out_dtype: torch.dtype) -> tuple[Any, ...]:
    """The arguments the fp8 upscaler passes its launch: grid x, grid y, then the kernel's."""
    recorded: list[tuple[Any, ...]] = []
    triton_dequant.upscale_fp8(lambda *args: recorded.append(args), q, s, out_dtype)
    return recorded[0]


def _key(q: torch.Tensor, s: torch.Tensor, out_dtype: torch.dtype) -> tuple[Any, ...]:
    """The specialisation key the fast launch computes for these inputs."""
    launch = triton_dequant.FP8_LAUNCH
    return (torch.cuda.current_device(), *launch._binder(*_recorded(q, s, out_dtype)[2:])[1])


def test_shape_stride_alignment_and_dtype_changes_between_calls_respecialise() -> None:
    layouts = _layouts()
    fp8 = triton_dequant.dequantize_fp8_1x128
    # Twice round, interleaved: every call after a change must still use its own kernel.
    for _ in range(2):
        for name, q, s, out_dtype in layouts:
            got = fp8(q, s, out_dtype)
            want = quant.dequantize_fp8_1x128(q, s, out_dtype)
            assert got.dtype == out_dtype, name
            assert_bit_identical(got, want)
    # The premise: Triton specialises each layout differently, and each has its own kernel.
    keys = [_key(q, s, out_dtype) for _, q, s, out_dtype in layouts]
    assert len(set(keys)) == len(layouts), [name for name, *_ in layouts]
    assert set(keys) <= set(triton_dequant.FP8_LAUNCH.specialisations)
    # Negative control: the same bytes decode differently as e4m3fnuz, so a launch of the
    # e4m3fn kernel for the fnuz input (another specialisation: FNUZ is a constexpr) would fail.
    _, q, s, _ = layouts[0]
    _, fnuz, _, _ = layouts[-1]
    assert bool((bits(fp8(fnuz, s, torch.bfloat16)) != bits(fp8(q, s, torch.bfloat16))).any())


def test_fp4_shape_changes_between_calls_respecialise() -> None:
    fp4 = triton_dequant.dequantize_mxfp4
    for rows in (1, 15, 16, 1, 64, 15):
        x = torch.randn(rows, 512, device="cuda") * 4
        packed, scale = quant.quantize_mxfp4(x)
        assert_bit_identical(
            fp4(packed, scale, torch.bfloat16),
            quant.dequantize_mxfp4(packed, scale, torch.bfloat16),
        )


def test_a_mismatched_compiled_kernel_is_refused_naming_the_argument(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    launch = triton_launch.SpecialisedLaunch(triton_dequant._fp8_1x128_kernel)
    q, s = _fp8_inputs(15)
    fp16 = triton_dequant.upscale_fp8(launch, q, s, torch.float16)
    assert_bit_identical(fp16, quant.dequantize_fp8_1x128(q, s, torch.float16))
    recorded = _recorded(q, s, torch.float16)
    grid, args = recorded[:2], recorded[2:]
    wrong = triton_dequant._fp8_1x128_kernel.warmup(*args, grid=grid)
    assert wrong.src.signature["out_ptr"] == "*fp16"
    # Triton handing back a kernel for fp16 outputs when bf16 was asked for must not launch.
    monkeypatch.setattr(triton_dequant._fp8_1x128_kernel, "warmup", lambda *a, **k: wrong)
    with pytest.raises(triton_launch.SpecialisationMismatch, match="argument out_ptr"):
        triton_dequant.upscale_fp8(launch, q, s, torch.bfloat16)


def test_the_launch_follows_the_current_stream_into_a_cuda_graph() -> None:
    q, s = _fp8_inputs(8, seed=3)
    x = torch.randn(8, 512, device="cuda") * 4
    packed, e8m0 = quant.quantize_mxfp4(x)
    fp8, fp4 = triton_dequant.dequantize_fp8_1x128, triton_dequant.dequantize_mxfp4
    fp8(q, s, torch.bfloat16), fp4(packed, e8m0, torch.bfloat16)  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out8 = fp8(q, s, torch.bfloat16)
        out4 = fp4(packed, e8m0, torch.bfloat16)
    new_q, new_s = _fp8_inputs(8, seed=4)
    # New inputs in the captured tensors (byte copies: fp4x2 and e8m0 have no copy_ kernels).
    q.view(torch.uint8).copy_(new_q.view(torch.uint8))
    s.copy_(new_s)
    new_packed, new_e8m0 = quant.quantize_mxfp4(torch.randn(8, 512, device="cuda"))
    packed.view(torch.uint8).copy_(new_packed.view(torch.uint8))
    e8m0.view(torch.uint8).copy_(new_e8m0.view(torch.uint8))
    graph.replay()
    torch.cuda.synchronize()
    assert_bit_identical(out8, quant.dequantize_fp8_1x128(q, s, torch.bfloat16))
    assert_bit_identical(out4, quant.dequantize_mxfp4(packed, e8m0, torch.bfloat16))
    # Negative control: the replay wrote the new inputs' result, not the capture's.
    assert not torch.equal(
        bits(out8), bits(quant.dequantize_fp8_1x128(*_fp8_inputs(8, seed=3), torch.bfloat16))
    )


def test_a_side_stream_gets_the_launch() -> None:
    q, s = _fp8_inputs(64, seed=5)
    want = quant.dequantize_fp8_1x128(q, s, torch.bfloat16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # The side stream first waits on a long kernel: a launch on another stream would run
        # before it and read q while the copy below is still pending.
        torch.cuda._sleep(50_000_000)
        fresh = q.clone()
        got = triton_dequant.dequantize_fp8_1x128(fresh, s, torch.bfloat16)
    side.synchronize()
    assert_bit_identical(got, want)


def test_registered_profiler_hooks_get_tritons_own_path(jit_runs: list[str]) -> None:
    q, s = _fp8_inputs(15, seed=6)
    triton_dequant.dequantize_fp8_1x128(q, s, torch.bfloat16)
    seen: list[Any] = []
    knobs.runtime.launch_enter_hook.add(seen.append)
    try:
        before = len(jit_runs)
        got = triton_dequant.dequantize_fp8_1x128(q, s, torch.bfloat16)
    finally:
        knobs.runtime.launch_enter_hook.remove(seen.append)
    assert (
        len(jit_runs) == before + 1
        and len(seen) == 1
        and seen[0].get()["name"] == "_fp8_1x128_kernel"
    )
    assert_bit_identical(got, quant.dequantize_fp8_1x128(q, s, torch.bfloat16))
    # Without the hook, the fast path again.
    triton_dequant.dequantize_fp8_1x128(q, s, torch.bfloat16)
    assert len(jit_runs) == before + 1

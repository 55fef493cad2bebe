"""Host time per call of the Triton wire upscalers: Triton's own launch against the fast launch.

For the fp8 wire (e4m3fn, 1x128 fp32 scales) and the fp4 wire (fp4x2, e8m0 scales per 32), on
flat [R, H] rows and on DeepEP's low-latency slab (fp8, [L, C, H] with column-major scales), four
variants per case:
- `torch`: `moe_runtime.quant`'s torch code (3 launches fp8, 13 fp4), the CPU binding;
- `jit`: the Triton kernel launched by `kernel[grid](*args)` (`JITFunction.run`), as before;
- `fast`: the bound upscaler, `moe_runtime.kernels.triton_launch.SpecialisedLaunch`;
- `jit launch` / `fast launch`: the launch alone, arguments prepared in advance.
Each batch of calls is timed on the host without a synchronisation inside it (the device queue
is drained before and after, untimed), so the numbers are what a call costs the calling thread.
Before timing, every case checks that `fast`, `jit` and `torch` give bit-identical outputs and
that the fast launch really is bound; a failed check is printed as FAILED with what differed
and makes the exit status 1.

    python -m benchmarks.triton_launch --device cuda --out-dir "$OUT"
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import device_of
from benchmarks.report import command_note, emit, fmt, machine_description, markdown_table
from moe_runtime import quant

MODULE = "benchmarks.triton_launch"
VARIANTS = ("torch", "jit", "fast", "jit launch", "fast launch")


@dataclass(frozen=True)
class Case:
    wire: str
    layout: str
    calls: dict[str, Callable[[], object]]
    outputs: dict[str, Callable[[], torch.Tensor]]


def _cases(device: torch.device, hidden: int, rows: Sequence[int]) -> list[Case]:
    generator = torch.Generator(device="cpu").manual_seed(0)
    cases = []
    shapes: list[tuple[str, tuple[int, ...]]] = [(f"[{r}, {hidden}]", (r, hidden)) for r in rows]
    shapes.append((f"slab [32, 8, {hidden}]", (32, 8, hidden)))
    for layout, shape in shapes:
        x = (torch.randn(shape, generator=generator) * 4).to(device)
        q, s = quant.quantize_fp8_1x128(x)
        if len(shape) == 3:  # DeepEP's column-major scales, read in place
            s = s.transpose(1, 2).contiguous().transpose(1, 2)
        cases.append(_case("fp8", layout, q, s, fp8=True))
        if len(shape) == 2:
            packed, e8m0 = quant.quantize_mxfp4(x)
            cases.append(_case("fp4", layout, packed, e8m0, fp8=False))
    return cases


def _case(wire: str, layout: str, q: torch.Tensor, s: torch.Tensor, *, fp8: bool) -> Case:
    # Imported here: importing Triton needs the GPU machine's driver.
    from moe_runtime.kernels import triton_dequant as module

    out_dtype = torch.bfloat16
    launch = module.FP8_LAUNCH if fp8 else module.MXFP4_LAUNCH
    upscale = module.upscale_fp8 if fp8 else module.upscale_mxfp4
    torch_code = quant.dequantize_fp8_1x128 if fp8 else quant.dequantize_mxfp4
    bound = module.dequantize_fp8_1x128 if fp8 else module.dequantize_mxfp4
    # The launch alone: the arguments _launch would pass, recorded once.
    recorded: list[tuple[object, ...]] = []
    upscale(lambda *args: recorded.append(args), q, s, out_dtype)
    args = recorded[0]
    outputs = {
        "torch": lambda: torch_code(q, s, out_dtype),
        "jit": lambda: upscale(launch.jit, q, s, out_dtype),
        "fast": lambda: bound(q, s, out_dtype),
    }
    calls: dict[str, Callable[[], object]] = dict(outputs)
    calls["jit launch"] = lambda: launch.jit(*args)
    calls["fast launch"] = lambda: launch(*args)
    return Case(wire, layout, calls, outputs)


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[x.element_size()])


def check(case: Case) -> list[str]:
    """What differs between the variants' outputs (empty: all bit-identical)."""
    want = case.outputs["torch"]()
    problems = []
    for name in ("jit", "fast"):
        got = case.outputs[name]()
        if got.shape != want.shape or got.dtype != want.dtype:
            problems.append(
                f"{name}: {got.dtype}{list(got.shape)}, torch {want.dtype}{list(want.shape)}"
            )
            continue
        differ = int((_bits(got) != _bits(want)).sum())
        if differ:
            problems.append(
                f"{name}: {differ} of {want.numel()} elements differ from the torch code"
            )
    return problems


def host_time(calls: dict[str, Callable[[], object]], batch: int, rounds: int) -> dict[str, float]:
    """Median µs per call on the host, variants interleaved (order reversed every other round)."""
    names = list(calls)
    for name in names:
        for _ in range(10):
            calls[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            call = calls[name]
            torch.cuda.synchronize()
            gc.disable()
            start = time.perf_counter_ns()
            for _ in range(batch):
                call()
            elapsed = time.perf_counter_ns() - start
            gc.enable()
            samples[name].append(elapsed / batch / 1000.0)
    torch.cuda.synchronize()
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--device", default="cuda", help="a CUDA/ROCm device (default: cuda)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--hidden", type=int, default=7168)
    parser.add_argument("--batch", type=int, default=200, help="calls per timed batch")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    device = device_of(args.device)
    if device.type != "cuda":
        raise SystemExit("the Triton upscalers run on a CUDA/ROCm device only: --device cuda")
    from moe_runtime.kernels import triton_dequant, triton_launch

    started = time.perf_counter()
    failures: list[str] = []
    kind = type(triton_dequant.FP8_LAUNCH).__name__
    if not isinstance(triton_dequant.FP8_LAUNCH, triton_launch.SpecialisedLaunch):
        failures.append(f"the bound fp8 launch is a {kind}, not a SpecialisedLaunch")
    rows = []
    for case in _cases(device, args.hidden, args.rows):
        problems = check(case)
        failures.extend(f"{case.wire} {case.layout}: {p}" for p in problems)
        times = host_time(case.calls, args.batch, args.rounds)
        rows.append(
            (
                case.wire,
                case.layout,
                *(fmt(times[v]) for v in VARIANTS),
                fmt(times["jit"] - times["fast"]),
                "yes" if not problems else "FAILED",
            )
        )
        print(
            f"  {case.wire} {case.layout}: " + ", ".join(f"{v} {times[v]:.1f}" for v in VARIANTS),
            flush=True,
        )
    table = markdown_table(
        ("wire", "layout", *(f"{v} µs" for v in VARIANTS), "saved µs", "bit-identical"), rows
    )
    body = (
        f"Machine: {machine_description(device)}.\n"
        f"Launch bound: {kind}; specialisations compiled: fp8 "
        f"{len(getattr(triton_dequant.FP8_LAUNCH, 'specialisations', ()))}, fp4 "
        f"{len(getattr(triton_dequant.MXFP4_LAUNCH, 'specialisations', ()))}.\n"
        f"{command_note(MODULE, argv, started)}\n"
        "Median host µs per call (no sync inside a timed batch); saved = jit - fast.\n\n"
        f"{table}\n\n"
        + (
            "All checks passed."
            if not failures
            else "FAILED checks:\n" + "\n".join(f"- {f}" for f in failures)
        )
    )
    emit(
        "Triton upscaler launch, host time per call",
        body,
        out_dir=args.out_dir,
        filename="triton_launch.md",
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

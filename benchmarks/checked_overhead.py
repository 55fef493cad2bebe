"""Per-call cost of the checked variant: `select(..., checked=True)` against the plain runner.

Both call the same stub kernel (one preallocated output, nothing computed), so the difference is
the validation prologue: host checks of dtypes and shapes plus the device-side asserts of id
ranges, `masked_m` and `total_recv`. On CUDA every timed batch is bracketed by a synchronisation,
so the asserts' kernels are included.

    python -m benchmarks.checked_overhead                # CPU, one combination per hot path
    python -m benchmarks.checked_overhead --device cuda --out-dir "$OUT"
    python -m benchmarks.checked_overhead --quick        # smoke test (numbers not meaningful)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

import generated
from benchmarks.common import (
    QUICK_SHAPE,
    Key,
    Shape,
    StubKernel,
    Workload,
    add_common_arguments,
    command_line,
    device_of,
    emit,
    fmt,
    key_name,
    machine_description,
    markdown_table,
    select_keys,
    synchronizer,
    time_interleaved,
)
from moe_runtime.testing.recording import KernelCall, RecordingKernel

MODULE = "benchmarks.checked_overhead"


def _time_case(
    workload: Workload, key: Key, tokens: int, *, quick: bool, budget: float
) -> dict[str, float]:
    """Median µs per call of the plain and the checked runner of `key`, on the same input."""
    placed = workload.dispatched(key[2], tokens)
    config, weights = workload.config(placed.rank), workload.weights(key[1])
    recorder = RecordingKernel(respond=KernelCall.output_like)
    generated.select(*key)(config, weights, kernel=recorder)(placed.dispatch_output)
    stub = StubKernel(recorder.only_call().output_like())
    plain = generated.select(*key)(config, weights, kernel=stub)
    checked = generated.select(*key, checked=True)(config, weights, kernel=stub)
    d = placed.dispatch_output
    return time_interleaved(
        {"plain": lambda: plain(d), "checked": lambda: checked(d)},
        sync=synchronizer(workload.device),
        rounds=5 if quick else 21,
        batch_seconds=0.0002 if quick else 0.002,
        budget_seconds=0.02 if quick else budget,
    )


def main(argv: Sequence[str] | None = None) -> list[tuple[str, int, float, float]]:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0]
    )
    add_common_arguments(parser, tokens=(8, 256))
    parser.add_argument("--budget-s", type=float, default=1.0, help="time budget per case")
    args = parser.parse_args(argv)
    device = device_of(args.device)
    shape = QUICK_SHAPE if args.quick else Shape()
    workload = Workload(shape, device, seed=args.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    results = []
    try:
        for key in select_keys(all_keys=args.all_keys, only=args.only):
            for tokens in [8] if args.quick else args.tokens:
                times = _time_case(workload, key, tokens, quick=args.quick, budget=args.budget_s)
                results.append((key_name(key), tokens, times["plain"], times["checked"]))
                print(f"  {key_name(key)} T={tokens}: {times}", flush=True)
    finally:
        torch.set_num_threads(threads)
    rows = [
        (f"`{name}`", tokens, fmt(plain_us), fmt(checked_us), fmt(checked_us - plain_us))
        for name, tokens, plain_us, checked_us in results
    ]
    body = (
        f"Machine: {machine_description(device, threads=1)}.\n"
        f"Layer: {shape.describe()}; median µs per call with a stub kernel.\n"
        f"Command: `{command_line(MODULE, argv)}` ({time.perf_counter() - started:.0f} s).\n\n"
        + markdown_table(("combination", "T", "plain µs", "checked µs", "prologue µs"), rows)
    )
    emit(
        f"Checked variant overhead ({device.type})",
        body,
        out_dir=args.out_dir,
        filename=f"checked_overhead_{device.type}.md",
    )
    return results


if __name__ == "__main__":
    main()

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
from collections.abc import Sequence

import torch

import generated
from benchmarks.common import Key, Workload, add_common_arguments, key_name, run_of
from benchmarks.report import command_note, emit_for, fmt, machine_description, markdown_table
from benchmarks.timing import synchronizer, time_interleaved

MODULE = "benchmarks.checked_overhead"


def _time_case(
    workload: Workload, key: Key, tokens: int, *, quick: bool, budget: float
) -> dict[str, float]:
    """Median µs per call of the plain and the checked runner of `key`, on the same input."""
    placed, config, weights, runner_class, _, stub = workload.recorded(key, tokens)
    plain = runner_class(config, weights, kernel=stub)
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
    run = run_of(args)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results = []
    try:
        for key in run.keys:
            for tokens in run.tokens:
                times = _time_case(
                    run.workload, key, tokens, quick=args.quick, budget=args.budget_s
                )
                results.append((key_name(key), tokens, times["plain"], times["checked"]))
                print(f"  {key_name(key)} T={tokens}: {times}", flush=True)
    finally:
        torch.set_num_threads(threads)
    rows = [
        (f"`{name}`", tokens, fmt(plain_us), fmt(checked_us), fmt(checked_us - plain_us))
        for name, tokens, plain_us, checked_us in results
    ]
    device = run.device
    body = (
        f"Machine: {machine_description(device, threads=1)}.\n"
        f"Layer: {run.shape.describe()}; median µs per call with a stub kernel.\n"
        f"{command_note(MODULE, argv, run.started)}\n\n"
        + markdown_table(("combination", "T", "plain µs", "checked µs", "prologue µs"), rows)
    )
    emit_for(
        device, "Checked variant overhead", body, out_dir=args.out_dir, stem="checked_overhead"
    )
    return results


if __name__ == "__main__":
    main()

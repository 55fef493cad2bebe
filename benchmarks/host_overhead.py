"""Per-call time around the kernel: generated runner vs SGLang's dynamic path vs hand-written code.

For each combination and batch size, four variants call the same stub kernel (it returns one
preallocated output and computes nothing), so the times isolate what surrounds the kernel:
(a) the generated runner, (b) `moe_runtime.testing.dynamic.DynamicRunner`, (c) the floor: the stub
called with the generated runner's arguments prepared in advance, (d) the hand-written runner of the
format (benchmarks/handwritten.py). Overhead = time - floor. On CUDA every timed batch is
bracketed by `torch.cuda.synchronize()`, so device work the runner queues is included.

    python -m benchmarks.host_overhead                 # CPU, one combination per hot path
    python -m benchmarks.host_overhead --device cuda --out-dir "$OUT"
    python -m benchmarks.host_overhead --all           # all combinations
    python -m benchmarks.host_overhead --quick         # CI smoke test: tiny layer, few repetitions
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from benchmarks.cases import Case, build_case
from benchmarks.common import DEFAULT_TOKENS, Run, add_common_arguments, key_name, run_of
from benchmarks.report import command_note, emit_for, fmt, machine_description, markdown_table
from benchmarks.timing import synchronizer, time_interleaved

MODULE = "benchmarks.host_overhead"

# issue 5: dynamic/generated overhead at least this, per format family.
DYNAMIC_RATIO_TARGET = {"standard": 3.0, "mori": 3.0, "deepep": 2.0}
HAND_RATIO_TARGET = 1.2


@dataclass(frozen=True)
class Result:
    """Median µs per call of each variant of one case (`dynamic` None where SGLang raises)."""

    case: Case
    generated: float
    dynamic: float | None
    hand_written: float
    floor: float

    @property
    def generated_overhead(self) -> float:
        return self.generated - self.floor

    @property
    def dynamic_overhead(self) -> float | None:
        return None if self.dynamic is None else self.dynamic - self.floor

    @property
    def hand_overhead(self) -> float:
        return self.hand_written - self.floor

    @property
    def dynamic_ratio(self) -> float | None:
        return _ratio(self.dynamic_overhead, self.generated_overhead)

    @property
    def hand_ratio(self) -> float | None:
        return _ratio(self.generated_overhead, self.hand_overhead)


def _ratio(numerator: float | None, denominator: float) -> float | None:
    if numerator is None or denominator <= 0:
        return None
    return numerator / denominator


def family(dispatch_format: str) -> str:
    return dispatch_format.split("_", 1)[0]


@dataclass(frozen=True)
class Options:
    run: Run
    rounds: int
    batch_seconds: float
    budget_seconds: float


def measure(options: Options) -> list[Result]:
    """Time every (combination, tokens) case; progress goes to stdout."""
    run = options.run
    sync = synchronizer(run.device)
    results = []
    for key in run.keys:
        for tokens in run.tokens:
            case = build_case(run.workload, key, tokens)
            times = time_interleaved(
                case.callables(),
                sync=sync,
                rounds=options.rounds,
                batch_seconds=options.batch_seconds,
                budget_seconds=options.budget_seconds,
            )
            result = Result(
                case=case,
                generated=times["generated"],
                dynamic=times.get("dynamic"),
                hand_written=times["hand-written"],
                floor=times["floor"],
            )
            results.append(result)
            print(
                f"  {key_name(key)} T={tokens}: generated {result.generated:.1f} µs, "
                f"dynamic {fmt(result.dynamic)} µs, hand-written {result.hand_written:.1f} µs, "
                f"floor {result.floor:.1f} µs",
                flush=True,
            )
    return results


def per_case_table(results: Sequence[Result]) -> tuple[str, list[str]]:
    """The per-case markdown table, and the notes its `SGLang path` column refers to."""
    notes: list[str] = []
    rows = []
    for r in results:
        case = r.case
        status = "ok"
        if case.dynamic_note is not None:
            if case.dynamic_note not in notes:
                notes.append(case.dynamic_note)
            number = notes.index(case.dynamic_note) + 1
            if case.dynamic is not None:
                word = "wrong"
            else:  # SGLang's path raised, or SGLang 0.5.13 has no such path
                word = "raises" if case.dynamic_note.startswith("raises") else "absent"
            status = f"{word} [{number}]"
        rows.append(
            (
                f"`{key_name(case.key)}`", case.tokens, case.rows,
                fmt(r.generated), fmt(r.dynamic), fmt(r.hand_written), fmt(r.floor),
                fmt(r.generated_overhead), fmt(r.dynamic_overhead), fmt(r.hand_overhead),
                fmt(r.dynamic_ratio, 2), fmt(r.hand_ratio, 2), status,
            )
        )
    headers = (
        "combination", "T", "rows", "gen µs", "dyn µs", "hand µs", "floor µs",
        "gen over", "dyn over", "hand over", "dyn/gen", "gen/hand", "SGLang path",
    )
    return markdown_table(headers, rows), notes


def _case_name(r: Result) -> str:
    return f"`{key_name(r.case.key)}` T={r.case.tokens}"


def summary_table(results: Sequence[Result]) -> str:
    """Per dispatch format: the ratios' median and worst case against the issue's targets.

    dyn/gen is summarised over the cases where SGLang's path is right: where it is wrong it
    skips work the format needs (an upscale, the slab flattening), so its time is not a baseline.
    """
    rows = []
    for dispatch_format in sorted({r.case.key[2] for r in results}):
        mine = [r for r in results if r.case.key[2] == dispatch_format]
        right = [r for r in mine if r.case.dynamic_note is None and r.dynamic_ratio is not None]
        target = DYNAMIC_RATIO_TARGET[family(dispatch_format)]
        dynamic_worst = min(right, key=lambda r: r.dynamic_ratio or 0.0, default=None)
        hand = [r for r in mine if r.hand_ratio is not None]
        hand_worst = max(hand, key=lambda r: r.hand_ratio or 0.0, default=None)
        rows.append(
            (
                dispatch_format, f"{len(mine)} ({len(right)})",
                fmt(statistics.median(r.dynamic_ratio or 0.0 for r in right) if right else None,
                    2),
                fmt(dynamic_worst.dynamic_ratio, 2) if dynamic_worst else "n/a",
                _case_name(dynamic_worst) if dynamic_worst else "-",
                f">= {target:g}",
                fmt(statistics.median(r.hand_ratio or 0.0 for r in hand) if hand else None, 2),
                fmt(hand_worst.hand_ratio, 2) if hand_worst else "n/a",
                _case_name(hand_worst) if hand_worst else "-",
                f"<= {HAND_RATIO_TARGET:g}",
            )
        )
    headers = (
        "format", "cases (SGLang right)", "dyn/gen median", "dyn/gen worst", "worst case",
        "target", "gen/hand median", "gen/hand worst", "worst case", "target",
    )
    return markdown_table(headers, rows)


def options_from(args: argparse.Namespace) -> Options:
    run = run_of(args)
    if args.quick:
        return Options(run, rounds=5, batch_seconds=0.0002, budget_seconds=0.02)
    return Options(
        run, rounds=args.rounds, batch_seconds=args.batch_ms / 1000, budget_seconds=args.budget_s
    )


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0]
    )
    add_common_arguments(parser, tokens=DEFAULT_TOKENS)
    parser.add_argument("--rounds", type=int, default=21, help="timed rounds per case (max)")
    parser.add_argument("--batch-ms", type=float, default=2.0, help="length of one timed batch")
    parser.add_argument("--budget-s", type=float, default=1.0, help="time budget per case")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1: per-call overhead is single-threaded, and "
        "more threads on a small shared machine make small ops noisy)",
    )
    args = parser.parse_args(argv)
    options = options_from(args)
    device = options.run.device
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results = measure(options)
    finally:
        torch.set_num_threads(threads)
    for r in results:
        values = [r.generated, r.hand_written, r.floor] + ([r.dynamic] if r.dynamic else [])
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise RuntimeError(f"{key_name(r.case.key)}: a time is not a positive number")
    table, notes = per_case_table(results)
    header = (
        f"Machine: {machine_description(device, threads=args.threads)}.\n"
        f"Layer: {options.run.shape.describe()}; T = global batch dispatched over ep ranks; rows = "
        "rows the kernel sees on the measured rank. Median µs per call; `over` = above the "
        "floor; dyn/gen and gen/hand are ratios of overheads.\n"
        f"{command_note(MODULE, argv, options.run.started)}\n"
    )
    notes_text = "\n".join(f"[{i}] {note}" for i, note in enumerate(notes, start=1))
    body = f"{header}\n{summary_table(results)}\n\n{table}\n\n{notes_text}"
    emit_for(device, "Host overhead per call", body, out_dir=args.out_dir, stem="host_overhead")
    return results


if __name__ == "__main__":
    main()

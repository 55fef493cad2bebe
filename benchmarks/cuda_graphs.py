"""Whole runners in CUDA graphs: capture, replay == eager, no host syncs, time per replayed layer.

Every combination whose dispatch format has static shapes (all but `deepep_normal`, whose row
count is the routing's) is captured with the graph-safe reference kernel, which has no host
synchronisation and no data-dependent shape. Checks per case:
- the runner called eagerly under `torch.cuda.set_sync_debug_mode("error")` raises nothing
  (once with the reference kernel, once with the stub, which isolates the runner's own code);
- a replay equals the eager call on the capture input, and after a fresh batch of the same
  shapes is copied into the captured input tensors, a replay equals the eager call on it;
- times (CUDA events, medians): eager and replayed layer with the reference kernel, and the
  replayed runner alone (stub kernel), i.e. what the runner's own work costs inside a graph.

    python -m benchmarks.cuda_graphs --device cuda --out-dir "$OUT"
    python -m benchmarks.cuda_graphs --device cuda --quick
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.cases import missing_sglang_path
from benchmarks.common import (
    STATIC_SHAPE_FORMATS,
    Key,
    Workload,
    add_common_arguments,
    key_name,
    run_of,
    select_keys,
)
from benchmarks.report import command_note, emit, fmt, machine_description, markdown_table
from moe_runtime.kernels.reference import ReferenceFusedMoe
from moe_runtime.testing.dynamic import DynamicRunner

MODULE = "benchmarks.cuda_graphs"


def graph_keys(*, all_keys: bool, only: Sequence[Key]) -> list[Key]:
    """The combinations to capture: every static-shape one unless `only` names some; `all_keys`
    is the default here (the brief asks for every static-shape runner)."""
    return select_keys(all_keys=all_keys or not only, only=only, formats=STATIC_SHAPE_FORMATS)


def clone_output(value: Any) -> Any:
    """A deep copy of a dispatch output or combine input (tensors cloned, layout kept)."""
    if isinstance(value, torch.Tensor):
        return value.clone(memory_format=torch.preserve_format)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(clone_output(item) for item in value))
    return value


def copy_into(target: Any, source: Any) -> None:
    """Copy every tensor of `source` into the same field of `target`, in place; other fields
    must already be equal (a graph cannot see them change)."""
    if isinstance(target, torch.Tensor):
        target.copy_(source)
        return
    if isinstance(target, tuple) and hasattr(target, "_fields"):
        for name in target._fields:
            copy_into(getattr(target, name), getattr(source, name))
        return
    if target != source:
        raise ValueError(f"cannot copy {source!r} into a captured input holding {target!r}")


def max_relative_difference(a: Any, b: Any) -> float:
    """max over the tensor fields of two combine inputs of |a - b| / max(|b|, 1e-30)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if not isinstance(x, torch.Tensor):
            continue
        if x.shape != y.shape or x.dtype != y.dtype:
            return float("inf")
        if torch.equal(x, y):
            continue
        diff = (x.double() - y.double()).abs().max().item()
        scale = max(y.double().abs().max().item(), 1e-30)
        worst = max(worst, diff / scale)
    return worst


def sync_free(call: Callable[[], object]) -> str:
    """'none' if `call` runs under sync debug mode "error" without raising, else the error."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        call()
    except RuntimeError as error:
        return " ".join(str(error).split())[:80]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return "none"


def capture(call: Callable[[], Any]) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Warm up on a side stream (as torch.cuda.graph's docs ask), then capture one call."""
    side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with warnings.catch_warnings():
        # A runner that launches nothing (MORI with a bf16 wire) captures an empty graph.
        warnings.filterwarnings("ignore", message="The CUDA Graph is empty")
        with torch.cuda.graph(graph):
            out = call()
    return graph, out


def time_events(call: Callable[[], object], *, repeats: int, rounds: int) -> float:
    """Median over `rounds` of the mean µs of `repeats` back-to-back calls (CUDA events)."""
    call()
    torch.cuda.synchronize()
    samples: list[float] = []
    for _ in range(rounds):
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record()
        for _ in range(repeats):
            call()
        end.record()
        end.synchronize()
        samples.append(float(start.elapsed_time(end)) * 1000.0 / repeats)
    return statistics.median(samples)


@dataclass(frozen=True)
class GraphRow:
    key: Key
    tokens: int
    rows: int
    syncs_reference: str
    syncs_runner: str
    syncs_dynamic: str
    replay_equal: float  # max relative difference, capture input
    fresh_equal: float  # max relative difference, fresh input copied into the captured one
    eager_us: float
    replay_us: float
    runner_replay_us: float


def run_case(workload: Workload, key: Key, tokens: int, repeats: int) -> GraphRow:
    a2a, quant, dispatch_format = key
    placed, config, weights, runner_class, _, stub = workload.recorded(key, tokens)
    fresh = workload.dispatched(dispatch_format, tokens, draw=1).dispatch_output
    runner = runner_class(config, weights, kernel=ReferenceFusedMoe(graph_safe=True))
    static_input = clone_output(placed.dispatch_output)

    runner(static_input)  # first-call work (cuBLAS handles, lazy init) is not per-call work
    syncs_reference = sync_free(lambda: runner(static_input))
    bare_runner = runner_class(config, weights, kernel=stub)
    syncs_runner = sync_free(lambda: bare_runner(static_input))
    missing = missing_sglang_path(key)
    if missing:
        syncs_dynamic = missing
    else:
        dynamic = DynamicRunner(config, weights, quant, kernel=stub, a2a_backend=a2a)
        try:
            dynamic(static_input)
            syncs_dynamic = sync_free(lambda: dynamic(static_input))
        except Exception as error:  # SGLang's own failure modes
            syncs_dynamic = f"raises {type(error).__name__}"

    eager = clone_output(runner(static_input))
    graph, graph_out = capture(lambda: runner(static_input))
    graph.replay()
    torch.cuda.synchronize()
    replay_equal = max_relative_difference(graph_out, eager)
    expected_fresh = clone_output(runner(fresh))
    copy_into(static_input, fresh)
    graph.replay()
    torch.cuda.synchronize()
    fresh_equal = max_relative_difference(graph_out, expected_fresh)

    # The reference is slow (dense over experts): few calls; the bare runner is cheap: many.
    eager_us = time_events(lambda: runner(static_input), repeats=repeats, rounds=3)
    replay_us = time_events(graph.replay, repeats=repeats, rounds=3)
    del graph, graph_out
    bare_graph, _ = capture(lambda: bare_runner(static_input))
    runner_replay_us = time_events(bare_graph.replay, repeats=100, rounds=5)
    del bare_graph
    torch.cuda.empty_cache()
    return GraphRow(
        key, tokens, placed.rows, syncs_reference, syncs_runner, syncs_dynamic,
        replay_equal, fresh_equal, eager_us, replay_us, runner_replay_us,
    )


def _equal_cell(difference: float) -> str:
    return "equal" if difference == 0 else f"rel {difference:.1e}"


def table(rows: Sequence[GraphRow]) -> str:
    body = [
        (
            f"`{key_name(r.key)}`", r.tokens, r.rows, r.syncs_reference, r.syncs_runner,
            _equal_cell(r.replay_equal), _equal_cell(r.fresh_equal),
            fmt(r.eager_us), fmt(r.replay_us), fmt(r.runner_replay_us, 2), r.syncs_dynamic,
        )
        for r in rows
    ]
    headers = (
        "combination", "T", "rows", "syncs (gen + reference)", "syncs (gen alone)",
        "replay vs eager", "replay vs eager, fresh input", "eager µs (reference)",
        "replay µs (reference)", "replay µs (runner alone)", "syncs (dynamic alone)",
    )
    return markdown_table(headers, body)


def main(argv: Sequence[str] | None = None) -> list[GraphRow]:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0]
    )
    add_common_arguments(parser, tokens=(1, 64))
    parser.add_argument(
        "--repeats", type=int, default=3,
        help="calls of the reference layer per timed round (3 rounds, median)",
    )
    args = parser.parse_args(argv)
    run = run_of(args, keys=graph_keys(all_keys=args.all_keys, only=args.only), sample_quick=True)
    device = run.device
    if device.type != "cuda":
        raise SystemExit("CUDA graphs need a CUDA device: run with --device cuda")
    rows = []
    for key in run.keys:
        for t in run.tokens:
            row = run_case(run.workload, key, t, 2 if args.quick else args.repeats)
            rows.append(row)
            print(
                f"  {key_name(key)} T={t}: syncs {row.syncs_reference}/{row.syncs_runner}, "
                f"replay {_equal_cell(row.replay_equal)}, fresh {_equal_cell(row.fresh_equal)}, "
                f"eager {row.eager_us:.0f} µs, replay {row.replay_us:.0f} µs, runner alone "
                f"{row.runner_replay_us:.2f} µs",
                flush=True,
            )
    failures = [
        r for r in rows
        if r.syncs_reference != "none" or r.syncs_runner != "none"
        or r.replay_equal != 0 or r.fresh_equal != 0
    ]
    body = (
        f"Machine: {machine_description(device)}.\nLayer: {run.shape.describe()}; kernel = "
        "ReferenceFusedMoe(graph_safe=True) (dense over experts: its times are the reference's, "
        "not AITER's); runner alone = the same runner with the stub kernel, captured.\n"
        f"{command_note(MODULE, argv, run.started)} "
        f"{len(rows) - len(failures)} of {len(rows)} cases sync-free with replay == eager.\n\n"
        f"{table(rows)}"
    )
    emit("CUDA graphs", body, out_dir=args.out_dir, filename="cuda_graphs.md")
    return rows


if __name__ == "__main__":
    main()

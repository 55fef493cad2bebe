"""Where the `standard` runner's overhead above the hand-written closure goes (issue 14, item 4).

For each `standard` combination, the generated runner against four variants of the same hot path
with the same state and the same stub kernel, all timed interleaved against the hand-written
runner and the floor of benchmarks/host_overhead:
- `folded`: the class check and the kernel read in one lookup (`self._kernel_for[type(d)]`,
  the same TypeError on a miss) instead of a separate check;
- `no check`: the hot path without the dispatch-output class check (gives up issue 8's
  TypeError before a field is read);
- `bound`: the generated hot path called as a bound method (`runner.__call__(d)`), which skips
  CPython's `slot_tp_call` (the argument tuple and `__call__` lookup of calling an instance);
- `no check, bound`: both.
Numbers are overheads above the floor divided by the hand-written runner's (gen/hand's units).

    python -m benchmarks.call_forms                    # CPU
    python -m benchmarks.call_forms --device cuda --out-dir "$OUT"
"""

from __future__ import annotations

import argparse
import ast
import inspect
import statistics
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.cases import build_case
from benchmarks.common import Shape, Workload, device_of
from benchmarks.report import command_note, emit, fmt, machine_description, markdown_table
from benchmarks.timing import synchronizer, time_interleaved
from moe_runtime.types import StandardCombineInput

MODULE = "benchmarks.call_forms"
QUANTS = ("unquant", "fp8_block", "mxfp4")
FORMS = ("generated", "folded", "no check", "bound", "no check, bound")


class _KernelFor(dict[type, Callable[..., torch.Tensor]]):
    def __missing__(self, cls: type) -> Callable[..., torch.Tensor]:
        raise TypeError(f"not a StandardDispatchOutput: {cls.__qualname__}")


_CHECK = "self._dispatch_types[type(dispatch_output)]"
_FOLDED_READ = "kernel = self._kernel_for[type(dispatch_output)]"


class _ReadKernel(ast.NodeTransformer):
    """`self._kernel` -> `kernel`: the hot path calls the kernel its folded lookup returned."""

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if ast.unparse(node) == "self._kernel":
            return ast.copy_location(ast.Name("kernel", ast.Load()), node)
        return self.generic_visit(node)


def _hot_path_without_check(
    runner_class: type, *, folded: bool
) -> Callable[..., StandardCombineInput]:
    """The generated `__call__` of `runner_class` recompiled without its class check (its first
    statement): `no check`; or with `folded`, the check and the kernel read as one lookup.

    Derived from the generated source, not copied from it, so that each variant differs from
    the runner it is timed against in that one respect, whatever the template writes.
    """
    function = ast.parse(textwrap.dedent(inspect.getsource(runner_class.__call__))).body[0]
    if not isinstance(function, ast.FunctionDef) or ast.unparse(function.body[0]) != _CHECK:
        raise RuntimeError(f"{runner_class.__module__}: the hot path does not open with {_CHECK}")
    body = function.body[1:]
    if folded:
        body = [ast.parse(_FOLDED_READ).body[0], *(_ReadKernel().visit(s) for s in body)]
    function.body = body
    module = ast.fix_missing_locations(ast.Module([function], type_ignores=[]))
    namespace = dict(vars(sys.modules[runner_class.__module__]))
    exec(compile(module, inspect.getsourcefile(runner_class) or "<generated>", "exec"), namespace)
    call: Callable[..., StandardCombineInput] = namespace[function.name]
    return call


def _variant(runner: Any, call: Callable[..., StandardCombineInput], d: Any) -> Any:
    """A copy of `runner` (same state) whose class's `__call__` is `call`."""
    cls = type(f"{type(runner).__name__}Variant", (type(runner),), {"__call__": call})
    copy = cls.__new__(cls)
    copy.__dict__.update(runner.__dict__)
    copy._kernel_for = _KernelFor({type(d): runner._kernel})
    return copy


def _forms(runner: Any, d: Any) -> dict[str, Callable[[], object]]:
    hot_path = _hot_path_without_check
    folded = _variant(runner, hot_path(type(runner), folded=True), d)
    no_check = _variant(runner, hot_path(type(runner), folded=False), d)
    bound, no_check_bound = runner.__call__, no_check.__call__
    # Each variant makes the generated runner's kernel call (the stub returns one tensor).
    assert folded(d).hidden_states is runner(d).hidden_states is no_check(d).hidden_states
    return {
        "folded": lambda: folded(d),
        "no check": lambda: no_check(d),
        "bound": lambda: bound(d),
        "no check, bound": lambda: no_check_bound(d),
    }


def measure(device: torch.device, tokens: Sequence[int], budget: float) -> list[tuple[Any, ...]]:
    workload = Workload(Shape(), device)
    rows = []
    for quant in QUANTS:
        for t in tokens:
            case = build_case(workload, ("none", quant, "standard"), t)
            calls = {k: v for k, v in case.callables().items() if k != "dynamic"}
            calls.update(_forms(case.generated, case.dispatch_output))
            times = time_interleaved(
                calls,
                sync=synchronizer(device),
                rounds=41,
                batch_seconds=0.002,
                budget_seconds=budget,
            )
            hand = times["hand-written"] - times["floor"]
            ratios = [(times[form] - times["floor"]) / hand for form in FORMS]
            rows.append((f"`none/{quant}/standard`", t, fmt(hand, 2), *(fmt(r, 2) for r in ratios)))
            print(
                f"  {quant} T={t}: "
                + ", ".join(f"{f} {r:.2f}" for f, r in zip(FORMS, ratios, strict=True))
            )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--budget-s", type=float, default=1.0, help="time budget per case")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    device = device_of(args.device)
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = measure(device, args.tokens, args.budget_s)
    medians = [statistics.median(float(row[3 + i]) for row in rows) for i in range(len(FORMS))]
    table = markdown_table(("combination", "T", "hand over µs", *FORMS), rows)
    body = (
        f"Machine: {machine_description(device, threads=1)}.\n"
        f"{command_note(MODULE, argv, started)}\n"
        "Overhead above the floor / the hand-written runner's (1.00 = as fast as the closure).\n\n"
        f"{table}\n\nMedians: "
        + ", ".join(f"{f} {m:.2f}" for f, m in zip(FORMS, medians, strict=True))
    )
    emit("Standard runner call forms", body, out_dir=args.out_dir, filename="call_forms.md")


if __name__ == "__main__":
    main()

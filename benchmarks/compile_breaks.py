"""torch.compile over whole runners: graph breaks of the generated runners vs the dynamic path.

The kernel is registered as a `torch.library` custom op (`moe_bench::fused_moe`) whose real
implementation is the graph-safe reference and whose fake implementation only shapes the output,
so Dynamo traces the code around the kernel and treats the kernel as one opaque node. For each
combination: the graphs and graph breaks that `torch._dynamo.explain` finds in the generated
runner and in `moe_runtime.testing.dynamic` on the same input, whether
`torch.compile(fullgraph=True)` accepts the generated runner, and whether its output equals eager.
Tracing does not depend on the layer's size, so a small layer is used; the backend defaults to
aot_eager (no C++ compiler).

    python -m benchmarks.compile_breaks                # one combination per hot path
    python -m benchmarks.compile_breaks --all
    python -m benchmarks.compile_breaks --quick        # CI smoke test
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch._dynamo

import generated
from benchmarks.cases import missing_sglang_path
from benchmarks.common import QUICK_SHAPE, Key, Workload, add_common_arguments, key_name, run_of
from benchmarks.report import command_note, emit_for, machine_description, markdown_table
from moe_runtime.formats import MORI_V2_FORMATS
from moe_runtime.kernels.reference import ReferenceFusedMoe
from moe_runtime.testing.dynamic import DynamicRunner, known_wrong
from moe_runtime.testing.recording import PARAMETERS, output_dtype

MODULE = "benchmarks.compile_breaks"

OP_NAME = "moe_bench::fused_moe"  # the graph-safe reference inside
STUB_OP_NAME = "moe_bench::fused_moe_stub"  # an uninitialised output: for paths it rejects
_SCHEMA = (
    "(Tensor hidden_states, Tensor w1, Tensor w2, Tensor topk_weight, Tensor topk_ids, "
    "Tensor? expert_mask, int activation, int quant_type, bool doweight_stage1, "
    "Tensor? w1_scale, Tensor? w2_scale, Tensor? a1_scale, Tensor? a2_scale, "
    "Tensor? num_local_tokens, ScalarType? dtype, int hidden_pad, int intermediate_pad, "
    "Tensor? bias1, Tensor? bias2) -> Tensor"
)
# The op's parameters, in the schema's order: fused_moe's, less two that change no result.
_OP_PARAMETERS = tuple(
    name for name in PARAMETERS if name not in ("block_size_M", "moe_sorting_dispatch_policy")
)
_REFERENCE = ReferenceFusedMoe(graph_safe=True)
_LIBRARY = torch.library.Library("moe_bench", "DEF")  # type: ignore[no-untyped-call]


def _real(*args: Any) -> torch.Tensor:
    return _REFERENCE(**dict(zip(_OP_PARAMETERS, args, strict=True)))


def _fake(hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, *args: Any) -> Any:
    dtype = args[11]  # the `dtype` argument, after topk_weight .. num_local_tokens
    return hidden_states.new_empty(
        (hidden_states.shape[0], w2.shape[1]), dtype=output_dtype(hidden_states, dtype)
    )


for _name, _implementation in (("fused_moe", _real), ("fused_moe_stub", _fake)):
    _LIBRARY.define(_name + _SCHEMA)  # type: ignore[no-untyped-call]
    _LIBRARY.impl(  # type: ignore[no-untyped-call]
        _name, _implementation, "CompositeExplicitAutograd"
    )
    torch.library.register_fake(f"moe_bench::{_name}", _fake, lib=_LIBRARY)


class CustomOpKernel:
    """fused_moe's keyword signature, forwarding to a custom op (enums as ints): the reference
    one, or with `stub=True` one that only shapes its output, so that a path the reference
    rejects (SGLang's wrong ones) can still be traced."""

    def __init__(self, *, stub: bool = False) -> None:
        self._op = torch.ops.moe_bench.fused_moe_stub if stub else torch.ops.moe_bench.fused_moe

    # fused_moe's parameters (moe_runtime.types.FusedMoeKernel, enums as ints) spelled out again,
    # on purpose: Dynamo traces this wrapper into the graphs measured here, and the guards it
    # installs depend on the wrapper's signature. Binding `*args, **kwargs` against the protocol
    # added 30-40 guards per graph, and passing them through to an op schema with defaults
    # removes 2-15 (both measured), either of which would change the guard counts reported.
    def __call__(
        self, hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
        topk_weight: torch.Tensor, topk_ids: torch.Tensor, expert_mask: torch.Tensor | None = None,
        activation: int = 0, quant_type: int = 0, doweight_stage1: bool = False,
        w1_scale: torch.Tensor | None = None, w2_scale: torch.Tensor | None = None,
        a1_scale: torch.Tensor | None = None, a2_scale: torch.Tensor | None = None,
        block_size_M: int | None = None, num_local_tokens: torch.Tensor | None = None,
        moe_sorting_dispatch_policy: int = 0, dtype: torch.dtype | None = None,
        hidden_pad: int = 0, intermediate_pad: int = 0,
        bias1: torch.Tensor | None = None, bias2: torch.Tensor | None = None,
    ) -> torch.Tensor:
        result: torch.Tensor = self._op(
            hidden_states, w1, w2, topk_weight, topk_ids, expert_mask, int(activation),
            int(quant_type), doweight_stage1, w1_scale, w2_scale, a1_scale, a2_scale,
            num_local_tokens, dtype, hidden_pad, intermediate_pad, bias1, bias2,
        )
        return result


class CustomOpOutputKernel:
    """`CustomOpKernel` with AITER's newer `output` keyword, for the MORI EPv2 runners (which
    refuse a kernel without it): the result is copied into `output`. A wrapper of its own, so
    that the other rows' wrapper, and with it their guard counts, stay as they were."""

    def __init__(self) -> None:
        self._kernel = CustomOpKernel()

    def __call__(self, *args: Any, output: torch.Tensor | None = None, **kwargs: Any) -> Any:
        result = self._kernel(*args, **kwargs)
        return result if output is None else output.copy_(result)


@dataclass(frozen=True)
class Explained:
    graphs: int
    breaks: int
    ops: int  # operations in the traced graphs (tensor ops, the kernel, views)
    guards: int  # conditions Dynamo checks on every call before reusing the graphs
    first_reason: str


@dataclass(frozen=True)
class Row:
    key: Key
    generated: Explained
    fullgraph: str  # "ok" or the error
    matches_eager: bool | None  # None when fullgraph failed
    dynamic: Explained | None  # None where SGLang's path raises eagerly
    dynamic_error: str | None
    # SGLang's result is wrong here (moe_runtime.testing.dynamic.known_wrong); None: no such path
    dynamic_wrong: bool | None


def _short(text: str, limit: int = 110) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def explain(function: Callable[[Any], Any], argument: Any) -> Explained:
    torch._dynamo.reset()
    result = torch._dynamo.explain(function)(argument)
    reasons = [_short(str(getattr(r, "reason", r))) for r in result.break_reasons]
    return Explained(
        graphs=result.graph_count,
        breaks=result.graph_break_count,
        ops=sum(len(ops) for ops in result.ops_per_graph),
        guards=len(result.out_guards),
        first_reason=reasons[0] if reasons else "",
    )


def _same_output(a: Any, b: Any) -> bool:
    return bool(torch.equal(a.hidden_states, b.hidden_states))


def check(workload: Workload, key: Key, tokens: int, backend: str) -> Row:
    a2a, quant, dispatch_format = key
    placed = workload.dispatched(dispatch_format, tokens)
    d = placed.dispatch_output
    config = workload.config(placed.rank)
    weights = workload.weights(quant)
    # MORI EPv2 runners write into combine's buffer through `output` (the plan's expert-output
    # record); every other runner gets the plain wrapper.
    kernel = CustomOpOutputKernel() if dispatch_format in MORI_V2_FORMATS else CustomOpKernel()
    runner = generated.select(*key)(config, weights, kernel=kernel)

    def call_generated(dispatch_output: Any) -> Any:
        return runner(dispatch_output)

    eager = call_generated(d)
    generated_explained = explain(call_generated, d)
    torch._dynamo.reset()
    matches: bool | None = None
    try:
        compiled = torch.compile(call_generated, fullgraph=True, backend=backend)
        matches = _same_output(compiled(d), eager)
        fullgraph = "ok"
    except Exception as error:  # reported in the table: that is the measurement
        fullgraph = _short(f"{type(error).__name__}: {error}", 80)

    missing = missing_sglang_path(key)
    if missing:
        return Row(key, generated_explained, fullgraph, matches, None, missing, None)
    # Only traced, never compared: the stub op lets SGLang's wrong paths (which the reference
    # rejects) be traced as far as SGLang's own code goes.
    dynamic_runner = DynamicRunner(
        config, weights, quant, kernel=CustomOpKernel(stub=True), a2a_backend=a2a
    )

    def call_dynamic(dispatch_output: Any) -> Any:
        return dynamic_runner(dispatch_output)

    dynamic: Explained | None = None
    dynamic_error: str | None = None
    try:
        call_dynamic(d)
    except Exception as error:
        dynamic_error = f"raises {type(error).__name__}"
    else:
        dynamic = explain(call_dynamic, d)
    wrong = known_wrong(a2a, quant, dispatch_format, ep_size=config.ep_size, hidden_pad=0)
    return Row(
        key, generated_explained, fullgraph, matches, dynamic, dynamic_error, wrong is not None
    )


def table(rows: Sequence[Row]) -> str:
    body = []
    for r in rows:
        dynamic = r.dynamic
        body.append(
            (
                f"`{key_name(r.key)}`", r.generated.graphs, r.generated.breaks,
                r.generated.ops, r.generated.guards, r.fullgraph,
                "n/a" if r.matches_eager is None else ("yes" if r.matches_eager else "NO"),
                dynamic.graphs if dynamic else r.dynamic_error,
                dynamic.breaks if dynamic else "-",
                dynamic.ops if dynamic else "-",
                dynamic.guards if dynamic else "-",
                (dynamic.first_reason or "-") if dynamic else "-",
                "no path" if r.dynamic_wrong is None else ("wrong" if r.dynamic_wrong else "right"),
            )
        )
    headers = (
        "combination", "gen graphs", "gen breaks", "gen ops", "gen guards",
        "gen fullgraph=True", "compiled == eager", "dyn graphs", "dyn breaks", "dyn ops",
        "dyn guards", "dyn first break", "SGLang result",
    )
    return markdown_table(headers, body)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0]
    )
    add_common_arguments(parser, tokens=(8,))
    parser.add_argument(
        "--backend", default="aot_eager",
        help="torch.compile backend for the fullgraph check (default aot_eager; inductor "
        "needs a C++ compiler)",
    )
    args = parser.parse_args(argv)
    # Tracing does not depend on the layer's size: a small layer keeps the reference fast.
    run = run_of(args, shape=QUICK_SHAPE, sample_quick=True)
    device = run.device
    rows = []
    for key in run.keys:
        row = check(run.workload, key, args.tokens[0], args.backend)
        rows.append(row)
        print(
            f"  {key_name(key)}: generated {row.generated.breaks} break(s), fullgraph "
            f"{row.fullgraph}; dynamic "
            f"{row.dynamic.breaks if row.dynamic else row.dynamic_error} break(s)",
            flush=True,
        )
    body = (
        f"Machine: {machine_description(device)}.\nLayer: {run.shape.describe()}, "
        f"T={args.tokens[0]}; kernel = custom op `{OP_NAME}` (graph-safe reference inside, "
        f"fake implementation for tracing); backend for fullgraph: {args.backend}; breaks "
        "counted by torch._dynamo.explain; ops = nodes in the traced graphs; guards = checks "
        "Dynamo runs on every call before reusing them.\n"
        f"{command_note(MODULE, argv, run.started)}\n\n{table(rows)}"
    )
    emit_for(
        device, "torch.compile graph breaks", body, out_dir=args.out_dir, stem="compile_breaks"
    )
    return rows


if __name__ == "__main__":
    main()

"""Host time of one DeepSeek-V3-shaped decode step: 61 MoE layers, eager and CUDA-graph replay.

Per dispatch format (fp8_block weights, DeepSeek-V3's method), a step is 61 calls, one per layer,
each layer its own runner (generated) or its own `moe_runtime.testing.dynamic.DynamicRunner`
(SGLang's path), around the stub kernel, which computes nothing: the times are the MoE layers' own
host work (and the device work it queues), not AITER's. The floor is 61 stub calls with the
generated runner's kernel arguments prepared. For every static-shape format the step is also
captured in a CUDA graph and replayed. `T` is the decode batch per rank (the global batch is T *
ep); launches per layer are counted with torch.profiler on one layer.

    python -m benchmarks.decode_step --device cuda --out-dir "$OUT"
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks import launches
from benchmarks.cases import missing_sglang_path
from benchmarks.common import STATIC_SHAPE_FORMATS, Key, Shape, Workload, device_of, key_name
from benchmarks.cuda_graphs import capture
from benchmarks.report import command_note, emit, fmt, machine_description, markdown_table
from benchmarks.timing import synchronizer, time_interleaved
from moe_runtime.testing.dynamic import DynamicRunner, known_wrong

MODULE = "benchmarks.decode_step"
LAYERS = 61
# DeepSeek-V3: H 7168, top-8 of 256 routed experts; EP 8 gives 32 local experts per rank.
SHAPE = Shape(hidden=7168, top_k=8, local_experts=32, ep_size=8, intermediate=128)
FORMATS = (
    ("none", "standard"),
    ("deepep", "deepep_normal"),
    ("deepep", "deepep_ll"),
    ("deepep", "deepep_ll_fp8"),
    ("mori", "mori_normal"),
    ("mori", "mori_ll"),
    ("mori", "mori_normal_fp8"),
    ("mori", "mori_ll_fp8"),
    ("mori", "mori_normal_fp4"),
    ("mori", "mori_ll_fp4"),
)
QUANT = "fp8_block"


@dataclass(frozen=True)
class StepRow:
    key: Key
    tokens_per_rank: int
    rows: int
    launches_generated: float | None  # CUDA only
    launches_dynamic: float | None
    eager_generated_us: float
    eager_dynamic_us: float | None
    floor_us: float
    replay_generated_us: float | None
    replay_dynamic_us: float | None
    dynamic_note: str


def _step(layers: Sequence[Callable[[Any], Any]], d: Any) -> Callable[[], object]:
    def run() -> object:
        out = None
        for layer in layers:
            out = layer(d)
        return out

    return run


def _replay(step: Callable[[], object]) -> Callable[[], object] | str:
    """The replay of a captured step, or why it does not capture."""
    try:
        graph, _ = capture(step)
    except Exception as error:  # a sync or a data-dependent shape in the captured code
        torch.cuda.synchronize()
        return f"capture fails: {type(error).__name__}"
    return graph.replay


def measure(workload: Workload, key: Key, tokens_per_rank: int, budget: float) -> StepRow:
    a2a, quant, dispatch_format = key
    placed, config, weights, runner_type, call, stub = workload.recorded(
        key, tokens_per_rank * SHAPE.ep_size
    )
    d = placed.dispatch_output
    gen_layers = [runner_type(config, weights, kernel=stub) for _ in range(LAYERS)]
    missing = missing_sglang_path(key)
    dyn_layers: list[DynamicRunner] = []
    if missing:
        note = missing
    else:
        dyn_layers = [
            DynamicRunner(config, weights, quant, kernel=stub, a2a_backend=a2a)
            for _ in range(LAYERS)
        ]
        note = known_wrong(a2a, quant, dispatch_format, ep_size=config.ep_size, hidden_pad=0) or ""
        try:
            dyn_layers[0](d)
        except Exception as error:  # SGLang's own failure modes: reported, not timed
            note = f"raises {type(error).__name__}"
            dyn_layers = []
    args, kwargs = call.args, call.kwargs

    def floor() -> object:
        for _ in range(LAYERS):
            stub(*args, **kwargs)
        return None

    variants: dict[str, Callable[[], object]] = {
        "generated": _step(gen_layers, d),
        "floor": floor,
    }
    if dyn_layers:
        variants["dynamic"] = _step(dyn_layers, d)
    replay: dict[str, Callable[[], object] | str] = {}
    cuda = workload.device.type == "cuda"
    if cuda and dispatch_format in STATIC_SHAPE_FORMATS:
        replay["generated"] = _replay(variants["generated"])
        if dyn_layers:
            replay["dynamic"] = _replay(variants["dynamic"])
    for name, replayed in replay.items():
        if callable(replayed):
            variants[f"replay {name}"] = replayed
    times = time_interleaved(
        variants,
        sync=synchronizer(workload.device),
        rounds=15,
        batch_seconds=0.01,
        budget_seconds=budget,
        warmup=3,
    )
    launches_gen = launches.count_cuda(lambda: gen_layers[0](d))[0] if cuda else None
    launches_dyn = launches.count_cuda(lambda: dyn_layers[0](d))[0] if cuda and dyn_layers else None
    failures = [f"{name}: {value}" for name, value in replay.items() if not callable(value)]
    return StepRow(
        key=key,
        tokens_per_rank=tokens_per_rank,
        rows=placed.rows,
        launches_generated=launches_gen,
        launches_dynamic=launches_dyn,
        eager_generated_us=times["generated"],
        eager_dynamic_us=times.get("dynamic"),
        floor_us=times["floor"],
        replay_generated_us=times.get("replay generated"),
        replay_dynamic_us=times.get("replay dynamic"),
        dynamic_note="; ".join(filter(None, [note, *failures])) or "right",
    )


def _ms(us: float | None) -> str:
    return "n/a" if us is None else f"{us / 1000:.3f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b <= 0 else f"{a / b:.1f}"


def table(rows: Sequence[StepRow]) -> str:
    notes: list[str] = []
    for r in rows:
        if r.dynamic_note != "right" and r.dynamic_note not in notes:
            notes.append(r.dynamic_note)

    def note(r: StepRow) -> str:
        return "right" if r.dynamic_note == "right" else f"[{notes.index(r.dynamic_note) + 1}]"

    body = [
        (
            f"`{key_name(r.key)}`",
            r.tokens_per_rank,
            r.rows,
            fmt(r.launches_generated, 1),
            fmt(r.launches_dynamic, 1),
            _ms(r.eager_generated_us),
            _ms(r.eager_dynamic_us),
            _ms(r.floor_us),
            _ratio(
                None if r.eager_dynamic_us is None else r.eager_dynamic_us - r.floor_us,
                r.eager_generated_us - r.floor_us,
            ),
            _ms(r.replay_generated_us),
            _ms(r.replay_dynamic_us),
            note(r),
        )
        for r in rows
    ]
    headers = (
        "combination",
        "T/rank",
        "rows",
        "launches/layer gen",
        "launches/layer dyn",
        "eager gen ms/step",
        "eager dyn ms/step",
        "floor ms/step",
        "dyn/gen over floor",
        "replay gen ms/step",
        "replay dyn ms/step",
        "SGLang path",
    )
    footnotes = "\n".join(f"[{i}] {text}" for i, text in enumerate(notes, start=1))
    return f"{markdown_table(headers, body)}\n\n{footnotes}"


def main(argv: Sequence[str] | None = None) -> list[StepRow]:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 64], help="T per rank")
    parser.add_argument("--budget-s", type=float, default=0.6, help="time budget per case")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    device = device_of(args.device)  # cpu: eager only (a smoke test; no graphs, no launches)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    workload = Workload(SHAPE, device)
    rows = []
    for a2a, dispatch_format in FORMATS:
        for tokens in args.tokens:
            row = measure(workload, (a2a, QUANT, dispatch_format), tokens, args.budget_s)
            rows.append(row)
            print(
                f"  {key_name(row.key)} T={tokens}: eager gen {_ms(row.eager_generated_us)} ms, "
                f"dyn {_ms(row.eager_dynamic_us)} ms, floor {_ms(row.floor_us)} ms, replay gen "
                f"{_ms(row.replay_generated_us)} ms, dyn {_ms(row.replay_dynamic_us)} ms",
                flush=True,
            )
    body = (
        f"Machine: {machine_description(device, threads=args.threads)}.\n"
        f"Step: {LAYERS} MoE layers, each its own runner, {SHAPE.describe()}, {QUANT} weights; "
        "kernel = stub (computes nothing), so the times are the layers' own host work and the "
        "device work it queues; T/rank = decode tokens per rank (global batch T * ep); rows = "
        "rows the kernel sees on the measured rank. Eager = wall time per step, batches "
        "bracketed by a device sync; replay = one CUDA graph of the whole step, replayed.\n"
        f"{command_note(MODULE, argv, started)}\n\n{table(rows)}"
    )
    emit("Decode step, 61 layers", body, out_dir=args.out_dir, filename="decode_step.md")
    return rows


if __name__ == "__main__":
    main()

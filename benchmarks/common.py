"""What every benchmark of issue 5 shares: the combinations, the layer shapes, the emulated inputs,
the stub kernel and the command-line options that pick them (timing: benchmarks.timing; the
markdown they print: benchmarks.report).

Shapes: `tokens` is the size of the global batch that the emulator dispatches over `ep_size` ranks
(the standard format replicates it, so its kernel sees `tokens` rows); each benchmark runs rank 0,
or for the flat formats whose row count depends on routing (DeepEP normal, MORI) the rank that
receives the most rows, so that no case is an empty dispatch.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

import generated
from moe_runtime.formats import MORI_WIRES
from moe_runtime.testing import emulate
from moe_runtime.testing.recording import KernelCall, RecordingKernel, value_difference
from moe_runtime.testing.weights import make_expert_weights
from moe_runtime.types import DispatchOutput, ExpertWeights, MoeLayerConfig, Runner

Key = tuple[str, str, str]

DEFAULT_TOKENS = (1, 8, 64, 256)
QUICK_TOKENS = 8  # --quick's one global batch size
# Formats whose shapes do not depend on the routing: a CUDA graph can capture their runners.
STATIC_SHAPE_FORMATS = frozenset(emulate.FORMATS) - {emulate.DEEPEP_NORMAL}


@dataclass(frozen=True)
class Shape:
    """One MoE layer on one rank. `intermediate` is kept small: the stub never reads weights."""

    hidden: int = 7168
    top_k: int = 8
    local_experts: int = 32
    ep_size: int = 8
    intermediate: int = 128

    @property
    def num_experts(self) -> int:
        return self.local_experts * self.ep_size

    def config(self, rank: int) -> MoeLayerConfig:
        """This layer on `rank` of its EP group, with SiLU (the stub never applies it)."""
        return MoeLayerConfig(
            num_experts=self.num_experts, num_local_experts=self.local_experts, ep_rank=rank,
            ep_size=self.ep_size, top_k=self.top_k, hidden_size=self.hidden,
            intermediate_size=self.intermediate, activation="silu",
        )

    def describe(self) -> str:
        return (
            f"H={self.hidden}, K={self.top_k}, L={self.local_experts}, ep={self.ep_size} "
            f"(E={self.num_experts}), I={self.intermediate}"
        )


# The smallest layer every quant method accepts (H and I multiples of 128): for --quick and tests.
QUICK_SHAPE = Shape(hidden=256, top_k=4, local_experts=4, ep_size=2, intermediate=128)


def key_name(key: Key) -> str:
    return "/".join(key)


def parse_key(text: str) -> Key:
    """`a2a/quant/dispatch` as a key of `generated.RUNNERS`, or a clear error."""
    parts = tuple(text.split("/"))
    if len(parts) != 3 or parts not in generated.RUNNERS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a supported a2a/quant/dispatch combination; "
            "`python -m generator --matrix schema/amd.yaml --list` lists them"
        )
    return (parts[0], parts[1], parts[2])


_HOT_PATH_BINDINGS = frozenset({"self._kernel", "self._dequantize"})


def _hot_path_source(key: Key) -> str:
    """The source of a runner's per-call methods (everything but `__init__`), and of the two
    bindings in `__init__` that the hot path calls through (the kernel with its bound keywords,
    the wire upscaler), normalised by ast."""
    runner_class = ast.parse(inspect.getsource(generated.select(*key))).body[0]
    if not isinstance(runner_class, ast.ClassDef):
        raise TypeError(f"{key_name(key)}: Runner is not a class")
    parts = []
    for node in runner_class.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        if node.name != "__init__":
            parts.append(ast.unparse(node))
            continue
        parts.extend(
            ast.unparse(statement)
            for statement in node.body
            if isinstance(statement, ast.Assign)
            and ast.unparse(statement.targets[0]) in _HOT_PATH_BINDINGS
        )
    return "\n".join(parts)


def _representative_order(key: Key) -> tuple[bool, bool, Key]:
    # Prefer a representative whose dynamic path runs: Mooncake/NIXL define no mask and
    # ct_w8a8_fp8 reads a field DeepEP/MORI outputs lack, so SGLang raises there.
    a2a, quant, _ = key
    return (a2a in ("mooncake", "nixl"), quant == "ct_w8a8_fp8", key)


def representative_keys(formats: Iterable[str] | None = None) -> list[Key]:
    """One combination per distinct hot path: runners whose per-call code is the same text cost
    the same, so timing one of each covers every generated hot path."""
    wanted = set(formats) if formats is not None else None
    groups: dict[str, list[Key]] = {}
    for key in sorted(generated.RUNNERS):
        if wanted is None or key[2] in wanted:
            groups.setdefault(_hot_path_source(key), []).append(key)
    return sorted(min(members, key=_representative_order) for members in groups.values())


def select_keys(
    *, all_keys: bool, only: Sequence[Key], formats: Iterable[str] | None = None
) -> list[Key]:
    """`only` if given, else every combination (`all_keys`) or one per distinct hot path."""
    wanted = set(formats) if formats is not None else None
    if only:
        return [key for key in only if wanted is None or key[2] in wanted]
    if all_keys:
        return [key for key in sorted(generated.RUNNERS) if wanted is None or key[2] in wanted]
    return representative_keys(wanted)


class StubKernel:
    """Takes any fused_moe call (it is only ever called with one a runner made); returns one
    preallocated output and computes nothing."""

    def __init__(self, out: torch.Tensor) -> None:
        self.out = out

    # `output` is named so that the EPv2 runners (which pass MORI's combine buffer) take the stub;
    # like AITER, it returns the buffer it was given, left as it is (the stub computes nothing).
    def __call__(
        self, *args: Any, output: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        return self.out if output is None else output


def same_call(a: KernelCall, b: KernelCall) -> list[str]:
    """Names of the arguments in which two kernel calls differ, however each was passed."""
    return sorted(
        name
        for name in a.keys() | b.keys()
        if value_difference(name, a.get(name), b.get(name)) is not None
    )


def to_device(value: Any, device: torch.device) -> Any:
    """A dispatch output (NamedTuples of tensors, nested) with every tensor moved to `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(to_device(item, device) for item in value))
    return value


class Placed(NamedTuple):
    rank: int
    dispatch_output: DispatchOutput
    rows: int  # rows the kernel sees (slots for the low-latency formats)


class Recorded(NamedTuple):
    """A combination on its measured rank for one batch: the rank's config and weights, the
    kernel call the generated runner makes on the input, and a stub that answers that call."""

    placed: Placed
    config: MoeLayerConfig
    weights: ExpertWeights
    runner_class: type[Runner]
    call: KernelCall
    stub: StubKernel


def _kernel_rows(output: DispatchOutput) -> int:
    hidden_states = output.hidden_states
    if hidden_states.dim() == 3:
        return int(hidden_states.shape[0] * hidden_states.shape[1])
    return int(hidden_states.shape[0])


def _valid_rows(output: DispatchOutput) -> int:
    """Rows that carry tokens: MORI's total_recv, DeepEP normal's N, all rows otherwise."""
    received = getattr(output, "num_recv_tokens_per_expert", None)
    if isinstance(received, torch.Tensor):
        return int(received.reshape(-1)[0])
    return _kernel_rows(output)


class Workload:
    """Weights per quant method and emulated dispatch outputs per (format, tokens), built once.

    Weights are drawn with `make_expert_weights` for this rank's experts; inputs come from
    `emulate.dispatch` over the whole EP group, seeded by `seed` and the token count.
    """

    def __init__(self, shape: Shape, device: torch.device, *, seed: int = 0) -> None:
        self.shape = shape
        self.device = device
        self.seed = seed
        self._weights: dict[str, ExpertWeights] = {}
        self._inputs: dict[tuple[str, int, int], Placed] = {}

    def weights(self, quant: str) -> ExpertWeights:
        if quant not in self._weights:
            shape = self.shape
            self._weights[quant] = make_expert_weights(
                quant, shape.local_experts, shape.hidden, shape.intermediate,
                seed=self.seed, device=self.device,
            )
        return self._weights[quant]

    def config(self, rank: int) -> MoeLayerConfig:
        return self.shape.config(rank)

    def recorded(self, key: Key, tokens: int) -> Recorded:
        """`key` at `tokens` on its measured rank, its generated runner's kernel call recorded."""
        placed = self.dispatched(key[2], tokens)
        config, weights = self.config(placed.rank), self.weights(key[1])
        runner_class = generated.select(*key)
        recorder = RecordingKernel(respond=KernelCall.output_like)
        runner_class(config, weights, kernel=recorder)(placed.dispatch_output)
        call = recorder.only_call()
        return Recorded(placed, config, weights, runner_class, call, StubKernel(call.output_like()))

    def dispatched(self, dispatch_format: str, tokens: int, *, draw: int = 0) -> Placed:
        """This rank's dispatch output of `dispatch_format` for a batch of `tokens`; `draw`
        picks another random batch of the same shape (same rank, so shapes match)."""
        cache_key = (dispatch_format, tokens, draw)
        if cache_key not in self._inputs:
            self._inputs[cache_key] = self._dispatch(dispatch_format, tokens, draw)
        return self._inputs[cache_key]

    def _dispatch(self, dispatch_format: str, tokens: int, draw: int) -> Placed:
        shape = self.shape
        batch = emulate.make_batch(
            tokens, shape.hidden, shape.num_experts, shape.top_k,
            ep_size=shape.ep_size, seed=self.seed + 1000 * tokens + draw,
        )
        # Every rank's slots hold at least as many rows as the most any rank sends.
        most_sent = -(-tokens // shape.ep_size)
        outputs = emulate.dispatch(batch, dispatch_format, max_tokens_per_rank=most_sent).outputs
        rank = 0
        if dispatch_format == emulate.DEEPEP_NORMAL or dispatch_format in MORI_WIRES:
            if draw == 0:
                rank = max(range(len(outputs)), key=lambda r: _valid_rows(outputs[r]))
            else:
                rank = self.dispatched(dispatch_format, tokens).rank
        output = to_device(outputs[rank], self.device)
        return Placed(rank, output, _kernel_rows(output))


def add_common_arguments(parser: argparse.ArgumentParser, *, tokens: Sequence[int]) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--all", action="store_true", dest="all_keys",
        help="every combination of generated.RUNNERS (default: one per distinct hot path)",
    )
    parser.add_argument(
        "--only", type=parse_key, action="append", default=[], metavar="A2A/QUANT/DISPATCH",
        help="benchmark only this combination (repeatable)",
    )
    parser.add_argument(
        "--tokens", type=int, nargs="+", default=list(tokens),
        help=f"global batch sizes (default: {' '.join(map(str, tokens))})",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke test: tiny layer, one token count, few repetitions (numbers not meaningful)",
    )
    parser.add_argument("--out-dir", type=Path, default=None, help="also write the tables here")
    parser.add_argument("--seed", type=int, default=0)


def device_of(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch build")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu or cuda, got {name!r}")
    return device


@dataclass(frozen=True)
class Run:
    """What the options of `add_common_arguments` select: the workload (`--quick`'s tiny layer or
    the benchmark's, on `--device`, seeded by `--seed`), the combinations and the batch sizes;
    and when the measurement started, for the report's Command line."""

    workload: Workload
    keys: list[Key]
    tokens: list[int]
    started: float

    @property
    def shape(self) -> Shape:
        return self.workload.shape

    @property
    def device(self) -> torch.device:
        return self.workload.device


def run_of(
    args: argparse.Namespace,
    *,
    keys: Sequence[Key] | None = None,
    shape: Shape | None = None,
    sample_quick: bool = False,
) -> Run:
    """The run `args` asks for; `keys` (default: `select_keys` of `--all`/`--only`) and `shape`
    (default: QUICK_SHAPE under `--quick`, else the default Shape) where a benchmark decides.
    With `sample_quick` (the slow benchmarks), `--quick` keeps at most four of the keys, spread
    over the list."""
    device = device_of(args.device)
    if keys is None:
        keys = select_keys(all_keys=args.all_keys, only=args.only)
    if sample_quick and args.quick:
        keys = keys[:: max(1, len(keys) // 4)][:4]
    if shape is None:
        shape = QUICK_SHAPE if args.quick else Shape()
    tokens = [QUICK_TOKENS] if args.quick else list(args.tokens)
    workload = Workload(shape, device, seed=args.seed)
    return Run(workload, list(keys), tokens, time.perf_counter())

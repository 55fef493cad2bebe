"""What every benchmark of issue 5 shares: the combinations, the layer shapes, the emulated inputs,
the stub kernel, interleaved timing, and the markdown tables they print.

Shapes: `tokens` is the size of the global batch that the emulator dispatches over `ep_size` ranks
(the standard format replicates it, so its kernel sees `tokens` rows); each benchmark runs rank 0,
or for the flat formats whose row count depends on routing (DeepEP normal, MORI) the rank that
receives the most rows, so that no case is an empty dispatch.
"""

from __future__ import annotations

import argparse
import ast
import gc
import inspect
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

import generated
from moe_runtime.testing import emulate
from moe_runtime.testing.recording import KernelCall, value_difference
from moe_runtime.testing.weights import make_expert_weights
from moe_runtime.types import DispatchOutput, ExpertWeights, MoeLayerConfig

Key = tuple[str, str, str]

DEFAULT_TOKENS = (1, 8, 64, 256)
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
        shape = self.shape
        return MoeLayerConfig(
            num_experts=shape.num_experts,
            num_local_experts=shape.local_experts,
            ep_rank=rank,
            ep_size=shape.ep_size,
            top_k=shape.top_k,
            hidden_size=shape.hidden,
            intermediate_size=shape.intermediate,
            activation="silu",
        )

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
        if dispatch_format == emulate.DEEPEP_NORMAL or dispatch_format.startswith("mori"):
            if draw == 0:
                rank = max(range(len(outputs)), key=lambda r: _valid_rows(outputs[r]))
            else:
                rank = self.dispatched(dispatch_format, tokens).rank
        output = to_device(outputs[rank], self.device)
        return Placed(rank, output, _kernel_rows(output))


def time_interleaved(
    variants: Mapping[str, Callable[[], object]],
    *,
    sync: Callable[[], None],
    rounds: int,
    batch_seconds: float,
    budget_seconds: float,
    warmup: int = 5,
) -> dict[str, float]:
    """Median µs per call of each variant.

    Each round times one batch of calls per variant, in the listed order on even rounds and the
    reverse on odd ones; a batch is bracketed by `sync` (a device synchronisation on CUDA) and
    sized to about `batch_seconds`. The garbage collector is paused inside batches. Rounds stop
    at `rounds`, or earlier (never under 5) when the case would exceed `budget_seconds`.
    """
    names = list(variants)
    per_call: dict[str, float] = {}
    for name in names:
        function = variants[name]
        for _ in range(warmup):
            function()
        sync()
        start = time.perf_counter()
        function()
        sync()
        per_call[name] = max(time.perf_counter() - start, 1e-7)
    calls = {name: max(1, min(1000, int(batch_seconds / per_call[name]))) for name in names}
    round_seconds = sum(calls[name] * per_call[name] for name in names)
    rounds = max(5, min(rounds, int(budget_seconds / max(round_seconds, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            function, count = variants[name], calls[name]
            gc.disable()
            sync()
            start = time.perf_counter_ns()
            for _ in range(count):
                function()
            sync()
            elapsed = time.perf_counter_ns() - start
            gc.enable()
            samples[name].append(elapsed / count / 1000.0)
    return {name: statistics.median(values) for name, values in samples.items()}


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device, *, threads: int | None = None) -> str:
    """One line naming the machine or card, and the software that produced a table (`threads`:
    the intra-op threads the measurement ran with, when not the current setting)."""
    software = (
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{threads or torch.get_num_threads()} intra-op thread(s)"
    )
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{name} (CUDA {torch.version.cuda}); host {_cpu_model()}; {software}"
    return f"CPU {_cpu_model()}, {os.cpu_count()} logical cores; {software}"


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces a run of `module` with `argv` (None: this process's)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m", module, *(shlex.quote(a) for a in arguments)])


def emit(title: str, body: str, *, out_dir: Path | None, filename: str) -> None:
    """Print a markdown section to stdout and, with `out_dir`, write it to `out_dir/filename`."""
    text = f"### {title}\n\n{body}\n"
    print(text, flush=True)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / filename).write_text(text)


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

"""Kernel launches per call around the kernel: generated runner vs dynamic path vs hand-written.

Every variant calls the stub kernel, which launches nothing, so everything counted belongs to the
code around it. Two counts:
- `ops`: aten operations that launch a device kernel, counted by a TorchDispatchMode (views,
  `empty` allocations and metadata queries excluded). Runs on any device; on CPU it is the proxy.
- on CUDA, `launches`: cudaLaunchKernel-family calls seen by torch.profiler, plus memcpy/memset
  and synchronisation calls; that is the ground truth.

    python -m benchmarks.launches                       # CPU: op counts
    python -m benchmarks.launches --device cuda --out-dir "$OUT"
"""

from __future__ import annotations

import argparse
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.cases import Case, build_case
from benchmarks.common import add_common_arguments, key_name, run_of
from benchmarks.report import command_note, emit_for, machine_description, markdown_table

MODULE = "benchmarks.launches"
_LAUNCH_CALLS = frozenset(
    {"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"}
)
_COPY_CALLS = frozenset({"cudaMemcpyAsync", "cudaMemcpy", "cudaMemsetAsync", "cudaMemset"})
_SYNC_CALLS = frozenset(
    {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"}
)
# No kernel on any device: allocations, metadata, and a view without alias annotations.
# (`scalar_tensor` is counted: `torch.where(c, x, 7)` fills a 0-dim tensor on x's device.)
_NO_KERNEL = frozenset(
    {"empty", "empty_strided", "empty_like", "sym_size", "sym_stride", "_unsafe_view"}
)
_REPEATS = 10


def _launches_kernel(func: torch._ops.OpOverload) -> bool:
    """Whether an aten op does device work: not a view (returns an alias it does not write)."""
    if func.overloadpacket.__name__ in _NO_KERNEL:
        return False
    returns = func._schema.returns
    is_view = bool(returns) and all(
        r.alias_info is not None and not r.alias_info.is_write for r in returns
    )
    return not is_view


class OpCounter(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Counts the aten ops that launch a kernel, by name."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(
        self,
        func: torch._ops.OpOverload,
        types: Sequence[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if _launches_kernel(func):
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@dataclass
class Count:
    ops: int
    op_names: list[str]
    launches: float | None = None  # CUDA only, per call
    copies: float | None = None
    syncs: float | None = None

    def cell(self) -> str:
        """The ops (CPU), or kernel launches plus any memcpy/memset (CUDA)."""
        if self.launches is None:
            return str(self.ops)
        if self.copies:
            return f"{self.launches:g} + {self.copies:g} copy"
        return f"{self.launches:g}"


def count_ops(call: Callable[[], object]) -> tuple[int, list[str]]:
    call()  # warm-up: first-call work (lazy init) is not per-call work
    with OpCounter() as counter:
        call()
    names = [f"{name}×{n}" if n > 1 else name for name, n in sorted(counter.ops.items())]
    return sum(counter.ops.values()), names


def _profiled_calls(call: Callable[[], object]) -> Counter[str]:
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Profiler clears events.*")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(_REPEATS):
                call()
    return Counter(event.name for event in prof.events())


def count_cuda(call: Callable[[], object]) -> tuple[float, float, float]:
    """cudaLaunchKernel-family, memcpy/memset and sync calls per call, over `_REPEATS` calls,
    less what the profiler itself shows around a call that does nothing (its closing sync)."""
    names = _profiled_calls(call)
    names.subtract(_profiled_calls(lambda: None))

    def per_call(calls: frozenset[str]) -> float:
        return sum(names[n] for n in calls) / _REPEATS

    return per_call(_LAUNCH_CALLS), per_call(_COPY_CALLS), per_call(_SYNC_CALLS)


def count_case(case: Case, device: torch.device) -> dict[str, Count]:
    counts = {}
    for name, call in case.callables().items():
        if name == "floor":
            continue
        ops, op_names = count_ops(call)
        count = Count(ops, op_names)
        if device.type == "cuda":
            count.launches, count.copies, count.syncs = count_cuda(call)
        counts[name] = count
    return counts


def table(cases: Sequence[Case], counts: Sequence[dict[str, Count]], device: torch.device) -> str:
    cuda = device.type == "cuda"
    rows = []
    for case, count in zip(cases, counts, strict=True):
        generated, hand = count["generated"], count["hand-written"]
        dynamic = count.get("dynamic")
        row: list[object] = [
            f"`{key_name(case.key)}`", case.tokens,
            generated.cell(), dynamic.cell() if dynamic else "raises", hand.cell(),
        ]
        if cuda:
            row += [f"{generated.syncs:g}", f"{dynamic.syncs:g}" if dynamic else "-"]
        row += [
            ", ".join(generated.op_names) or "-",
            (", ".join(dynamic.op_names) or "-") if dynamic else "-",
        ]
        rows.append(row)
    unit = "launches" if cuda else "ops"
    headers = ["combination", "T", f"gen {unit}", f"dyn {unit}", f"hand {unit}"]
    if cuda:
        headers += ["gen syncs", "dyn syncs"]
    headers += ["generated ops", "dynamic ops"]
    return markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Count]]:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0]
    )
    add_common_arguments(parser, tokens=(8,))
    args = parser.parse_args(argv)
    run = run_of(args)
    device = run.device
    cases: list[Case] = []
    counts: list[dict[str, Count]] = []
    for key in run.keys:
        for t in run.tokens:
            case = build_case(run.workload, key, t)
            cases.append(case)
            counts.append(count_case(case, device))
    what = (
        "cudaLaunchKernel-family calls per call, plus memcpy/memset calls (`+ n copy`), and "
        "stream/device/event synchronisations (torch.profiler, less what it shows around a call "
        "that does nothing)"
        if device.type == "cuda"
        else "aten ops per call that launch a device kernel (TorchDispatchMode; views and "
        "allocations excluded), the CPU proxy for launches"
    )
    body = (
        f"Machine: {machine_description(device)}.\nLayer: {run.shape.describe()}. Counted: "
        f"{what}; the stub kernel launches nothing, so all of it is the code around the kernel.\n"
        f"{command_note(MODULE, argv, run.started)}\n\n"
        f"{table(cases, counts, device)}"
    )
    emit_for(device, "Kernel launches per call", body, out_dir=args.out_dir, stem="launches")
    return counts


if __name__ == "__main__":
    main()

"""Per-layer host time of SGLang's own `MoeRunner.run` against the installed generated runner.

Runs in the venv `.ci/sglang` builds (real SGLang; tests/sglang/fake_aiter stands in for AITER).
Both variants call one stub kernel (AITER's `fused_moe` signature, returns a preallocated output):
SGLang's path imports it per call from `aiter.fused_moe`, where the stub is put; the installed
runner is given the same stub. So the times are what surrounds the kernel: SGLang's pre-permute,
running-state dict, runner core and post-permute, against the fused-function slot and the
generated runner. Each call is `MoeRunner.run(dispatch_output, quant_info)` on rank 0 of EP 2,
with SGLang's own dispatch-output object. On CUDA, every timed batch is bracketed by
`torch.cuda.synchronize()`.

    .sglang-venv/bin/python -m benchmarks.sglang_overhead
    .sglang-venv/bin/python -m benchmarks.sglang_overhead --device cuda --out-dir "$OUT"
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "sglang" / "fake_aiter"))
os.environ["MOE_RUNTIME_KERNEL"] = "aiter"

import aiter.fused_moe  # noqa: E402  (the fake: its fused_moe is replaced by the stub below)

from benchmarks.common import Shape, StubKernel, device_of  # noqa: E402
from benchmarks.report import (  # noqa: E402
    command_line,
    emit,
    fmt,
    machine_description,
    markdown_table,
)
from benchmarks.timing import synchronizer, time_interleaved  # noqa: E402
from moe_runtime.integrations import sglang as integration  # noqa: E402
from moe_runtime.testing import emulate  # noqa: E402
from moe_runtime.testing.weights import make_expert_weights, slice_experts  # noqa: E402
from tests.sglang import harness  # noqa: E402

MODULE = "benchmarks.sglang_overhead"
KEYS = (
    ("none", "unquant", "standard"),
    ("none", "fp8_block", "standard"),
    ("deepep", "fp8_block", "deepep_normal"),
    ("mori", "fp8_block", "mori_normal_fp8"),
    ("mori", "unquant", "mori_ll"),
)
EXPERTS, HIDDEN, INTERMEDIATE, TOP_K, EP_SIZE = 8, 256, 128, 4, 2
LAYER = Shape(
    hidden=HIDDEN, top_k=TOP_K, local_experts=EXPERTS // EP_SIZE, ep_size=EP_SIZE,
    intermediate=INTERMEDIATE,
)


def measure_key(
    key: tuple[str, str, str], tokens: int, device: torch.device, budget: float
) -> dict[str, float]:
    a2a, quant, dispatch = key
    harness.set_a2a_backend(a2a)
    weights = make_expert_weights(quant, EXPERTS, HIDDEN, INTERMEDIATE, seed=0, device=device)
    batch = emulate.make_batch(
        tokens, HIDDEN, EXPERTS, TOP_K, ep_size=EP_SIZE, seed=1, device=device
    )
    ours = emulate.dispatch(batch, dispatch).outputs[0]
    config = LAYER.config(0)
    rank_weights = slice_experts(weights, 0, LAYER.local_experts)
    dispatch_output = harness.sglang_dispatch_output(ours)
    info = harness.quant_info(quant, rank_weights, harness.Dispatcher(a2a, config), dispatch_output)
    rows = ours.hidden_states.shape[0]
    stub = StubKernel(torch.zeros(rows, HIDDEN, dtype=torch.bfloat16, device=device))
    aiter.fused_moe.fused_moe = stub  # what SGLang's runner core imports on every call
    native = harness.moe_runner(config)
    installed = harness.moe_runner(config)
    integration.install_on_runner(
        installed,
        a2a=a2a,
        quant=quant,
        dispatch=[dispatch],
        config=config,
        weights=integration.weights_from_quant_info(info),
        kernel=stub,
    )
    return time_interleaved(
        {
            "sglang": lambda: native.run(dispatch_output, info),
            "installed": lambda: installed.run(dispatch_output, info),
        },
        sync=synchronizer(device),
        rounds=41,
        batch_seconds=0.02,
        budget_seconds=budget,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--budget", type=float, default=4.0, help="seconds per case")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = device_of(args.device)
    rows = []
    for key in KEYS:
        for tokens in args.tokens:
            times = measure_key(key, tokens, device, args.budget)
            rows.append(
                [
                    "/".join(key),
                    tokens,
                    fmt(times["sglang"]),
                    fmt(times["installed"]),
                    fmt(times["sglang"] / times["installed"], 2),
                ]
            )
    release = importlib.metadata.version("sglang")
    body = (
        f"Machine: {machine_description(device)}; SGLang {release}.\n"
        f"Command: `{command_line(MODULE, argv)}`\n\n"
        + markdown_table(
            [
                "combination (EP 2, rank 0)",
                "tokens",
                "SGLang MoeRunner.run (µs)",
                "installed (µs)",
                "ratio",
            ],
            rows,
        )
    )
    emit(
        f"SGLang MoeRunner.run vs installed runner ({device.type}, SGLang {release})",
        body,
        out_dir=args.out_dir,
        filename=f"sglang_overhead_{device.type}_{release}.md",
    )


if __name__ == "__main__":
    main()

"""One MoE layer end to end through a generated runner, in a few seconds on a CPU.

    python -m moe_runtime.demo --a2a deepep --quant fp8_block --dispatch deepep_normal --ep 2

It builds random expert weights in the quant method's layout, a router-like batch, the per-rank
dispatch outputs of the format (emulated in one process, as `moe_runtime.testing.emulate` does for
the tests), runs the selected generated runner on every rank with the bound kernel (the reference
off ROCm), combines, and prints the error against dense float64 math over all experts and the time
per runner call. Exit status: 0 when the output is the dense MoE within the path's activation
rounding (`moe_runtime.testing.dense.dense_mismatch`), 1 when it is not, 2 for an unserved key or
bad arguments.

A demo, not part of the runtime that generated code imports: it drives the runners with
`moe_runtime.testing` (the weight builder, the emulated dispatchers, the dense oracle), which no
generated module reaches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

import generated
from moe_runtime import kernels
from moe_runtime.testing import emulate
from moe_runtime.testing.dense import dense_layer, dense_mismatch, layer_activation
from moe_runtime.testing.weights import make_expert_weights, slice_experts


def _parser() -> argparse.ArgumentParser:
    a2a = sorted({key[0] for key in generated.RUNNERS})
    quant = sorted({key[1] for key in generated.RUNNERS})
    dispatch = sorted({key[2] for key in generated.RUNNERS})
    parser = argparse.ArgumentParser(
        prog="python -m moe_runtime.demo",
        description="Run one MoE layer through a generated runner and check it against dense math.",
        epilog="`python -m generator --matrix schema/amd.yaml --list` lists the served keys. "
        "Exit status: 0 the output is the dense MoE, 1 it is not, 2 unserved key or bad arguments.",
    )
    parser.add_argument("--a2a", required=True, choices=a2a, help="all-to-all backend")
    parser.add_argument("--quant", required=True, choices=quant, help="quant method")
    parser.add_argument("--dispatch", required=True, choices=dispatch, help="dispatch format")
    parser.add_argument("--ep", type=int, default=2, help="expert-parallel ranks (default 2)")
    parser.add_argument("--tokens", type=int, default=32, help="global batch (default 32)")
    parser.add_argument("--experts", type=int, default=8, help="routed experts (default 8)")
    parser.add_argument("--top-k", type=int, default=2, help="experts per token (default 2)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size (default 256)")
    parser.add_argument("--intermediate", type=int, default=128, help="per-expert (default 128)")
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per rank (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The layer of `args` end to end; returns what `main` prints."""
    if args.ep < 1 or args.experts % args.ep:
        raise ValueError(f"--experts {args.experts} must split evenly over --ep {args.ep}")
    key = (args.a2a, args.quant, args.dispatch)
    runner_type = generated.select(*key)  # UnsupportedCombination names the reason
    activation = layer_activation(args.quant)
    weights = make_expert_weights(
        args.quant, args.experts, args.hidden, args.intermediate, seed=args.seed
    )
    batch = emulate.make_batch(
        args.tokens, args.hidden, args.experts, args.top_k, ep_size=args.ep, seed=args.seed + 1
    )
    dispatched = emulate.dispatch(batch, args.dispatch)
    local = args.experts // args.ep
    combine_inputs, rows, seconds = [], [], []
    for rank, dispatch_output in enumerate(dispatched.outputs):
        config = batch.layer_config(rank, args.intermediate, activation)
        runner = runner_type(config, slice_experts(weights, rank * local, (rank + 1) * local))
        combine_inputs.append(runner(dispatch_output))
        rows.append(int(dispatch_output.hidden_states.shape[0]))
        for _ in range(args.repeat):
            start = time.perf_counter()
            runner(dispatch_output)
            seconds.append(time.perf_counter() - start)
    output = emulate.combine(dispatched, combine_inputs).double()
    expected = dense_layer(batch, weights, args.quant, activation=activation)
    error = float((output - expected).abs().max())
    rms_error = float((output - expected).norm() / expected.norm().clamp(min=1e-30))
    return {
        "key": "/".join(key),
        "module": generated.RUNNERS[key],
        "kernel": kernels.describe(),
        "rows": rows,
        "max_abs_error": error,
        "relative_rms_error": rms_error,
        # Why the output is not the dense MoE within the path's activation rounding, or None.
        "mismatch": dense_mismatch(output, expected, args.quant, args.dispatch),
        "ms_per_call": 1e3 * statistics.median(seconds) if seconds else float("nan"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = run(args)
    except (LookupError, ValueError) as error:  # UnsupportedCombination is a LookupError
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"combination   {result['key']}  (generated/{result['module']}.py)")
    print(f"kernel        {result['kernel']}")
    print(f"rows per rank {result['rows']}")
    print(
        f"error         {result['relative_rms_error']:.2e} relative rms, "
        f"{result['max_abs_error']:.3e} max abs, against dense float64 math over all experts"
    )
    print(
        f"time per call {result['ms_per_call']:.3f} ms (median, {torch.get_num_threads()} threads)"
    )
    if result["mismatch"] is not None:
        print(f"check         FAILED: {result['mismatch']}")
        return 1
    print("check         ok: the dense MoE within this path's activation rounding")
    return 0


if __name__ == "__main__":
    sys.exit(main())

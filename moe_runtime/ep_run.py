"""Run one model-sized MoE layer with expert parallelism across real processes.

    python -m moe_runtime.ep_run --nproc 4 --a2a mori --quant fp8_block --dispatch mori_normal_fp8

Starts `--nproc` ranks on torch.distributed (gloo on the CPU or with CUDA tensors, NCCL with one
GPU per rank), or joins a group `torchrun` started (RANK/WORLD_SIZE set). Every rank builds its
own experts' weights and the generated runner of (a2a, quant, dispatch), dispatches its tokens
with `moe_runtime.distributed` (rows move over torch.distributed whatever the a2a backend: the
backend picks the runner; the real DeepEP/MORI/Mooncake/NIXL transports go through
`moe_runtime.distributed.adapters` where their hardware is), runs the layer and combines. Each
rank prints one row: rows sent and received, the error against the float64 dense layer (each
rank computes its experts' share; a sum over ranks is the whole layer), and the time per layer.
Exit status: 0 when every rank is within the path's tolerance, 1 when one is not or a rank
failed, 2 for bad arguments.

A driver, not part of the runtime that generated code imports: it builds its weights and batch
with `moe_runtime.testing` (the weight builder, the emulation's batch, the float64 oracle), which
no generated module reaches.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from moe_runtime.distributed import combine, dispatch
from moe_runtime.formats import wire_group
from moe_runtime.testing import emulate, ep_oracle
from moe_runtime.testing.dense import dense_mismatch, dissimilarity, layer_activation
from moe_runtime.testing.weights import (
    QUANT_METHODS,
    concat_experts,
    make_expert_weights,
    weight_group,
)
from moe_runtime.types import ExpertWeights

A2A_BACKENDS = ("none", "deepep", "mooncake", "nixl", "mori")
# (hidden, intermediate per partition, routed experts, top-k) of public model configs.
PRESETS = {
    "small": (256, 128, 8, 3),
    "qwen3-30b-a3b": (2048, 768, 128, 8),
    "mixtral-8x7b": (4096, 14336, 8, 2),
    "deepseek-v3": (7168, 2048, 256, 8),
}


@dataclasses.dataclass(frozen=True)
class Layer:
    a2a: str
    quant: str
    dispatch: str
    hidden: int
    intermediate: int
    experts: int
    top_k: int
    tokens: int  # per rank
    seed: int


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m moe_runtime.ep_run",
        description=__doc__.split("\n\n")[0] + " Example: --nproc 2 --a2a deepep --quant "
        "fp8_block --dispatch deepep_normal (CPU, gloo).",
        epilog="Shapes: --preset picks (hidden, intermediate, experts, top-k) from a model; "
        "--hidden/--intermediate/--experts/--top-k override it. `python -m generator --matrix "
        "schema/amd.yaml --list` lists the supported (a2a, quant, dispatch) combinations.",
    )
    parser.add_argument("--nproc", type=int, default=2, help="ranks to start (default 2)")
    parser.add_argument("--a2a", required=True, choices=A2A_BACKENDS, help="a2a backend")
    parser.add_argument("--quant", required=True, choices=QUANT_METHODS, help="quant method")
    parser.add_argument(
        "--dispatch", required=True, choices=emulate.FORMATS, help="dispatch format"
    )
    parser.add_argument(
        "--backend",
        choices=("gloo", "nccl"),
        default=None,
        help="torch.distributed backend (default: gloo on cpu, nccl on cuda)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where tensors live (cuda: rank r on GPU r %% device count)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="small",
        help="model shape (default small: H=256 I=128 E=8 K=3)",
    )
    parser.add_argument("--hidden", type=int, help="hidden size H")
    parser.add_argument("--intermediate", type=int, help="intermediate size I per partition")
    parser.add_argument("--experts", type=int, help="routed experts E (a multiple of --nproc)")
    parser.add_argument("--top-k", type=int, help="experts per token K")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per rank (default 64)")
    parser.add_argument("--iters", type=int, default=5, help="timed layers (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed layers first (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="weights and batch seed")
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds before a rank that has not finished fails the run",
    )
    return parser


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Layer:
    """Every problem with the arguments, reported at once with argparse's usage and exit 2."""
    import generated  # the caller's side of the layering: the runtime never imports it

    hidden, inter, experts, top_k = PRESETS[args.preset]
    layer = Layer(
        args.a2a,
        args.quant,
        args.dispatch,
        args.hidden or hidden,
        args.intermediate or inter,
        args.experts or experts,
        args.top_k or top_k,
        args.tokens,
        args.seed,
    )
    problems = []
    key = (layer.a2a, layer.quant, layer.dispatch)
    try:
        generated.select(*key)
    except generated.UnsupportedCombination as error:
        problems.append(str(error))
    if args.nproc < 1:
        problems.append(f"--nproc must be >= 1, got {args.nproc}")
    elif layer.experts % args.nproc:
        problems.append(f"--experts ({layer.experts}) must be a multiple of --nproc ({args.nproc})")
    if not 1 <= layer.top_k <= layer.experts:
        problems.append(f"--top-k must be in [1, experts = {layer.experts}], got {layer.top_k}")
    if layer.tokens < 1 or args.iters < 1 or args.warmup < 0:
        problems.append("--tokens and --iters must be >= 1, --warmup >= 0")
    for group, sizes in (
        (wire_group(layer.dispatch), {"H": layer.hidden}),
        (weight_group(layer.quant), {"H": layer.hidden, "I": layer.intermediate}),
    ):
        bad = [f"{name}={size}" for name, size in sizes.items() if group and size % group]
        if bad:
            problems.append(
                f"{layer.quant} over {layer.dispatch} needs multiples of {group}: {', '.join(bad)}"
            )
    backend = args.backend or ("nccl" if args.device == "cuda" else "gloo")
    if backend == "nccl" and args.device != "cuda":
        problems.append("--backend nccl needs --device cuda")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            problems.append("--device cuda: no CUDA device is visible")
        elif backend == "nccl" and args.nproc > torch.cuda.device_count():
            problems.append(
                f"NCCL takes one GPU per rank ({args.nproc} ranks, "
                f"{torch.cuda.device_count()} GPUs); use --backend gloo to share a GPU"
            )
    if problems:
        parser.error("\n  ".join(problems))
    args.backend = backend
    return layer


def _local_weights(layer: Layer, rank: int, world: int, device: torch.device) -> ExpertWeights:
    """This rank's experts, each drawn from its own seed, so that expert e is the same model
    whatever the number of ranks."""
    local = layer.experts // world
    return concat_experts(
        [
            make_expert_weights(
                layer.quant,
                1,
                layer.hidden,
                layer.intermediate,
                seed=layer.seed * 100_003 + e,
                device=device,
            )
            for e in range(rank * local, (rank + 1) * local)
        ]
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _received(output: Any) -> int:
    """Rows the dispatcher delivered to this rank (slab slots in use, MORI's total_recv)."""
    if hasattr(output, "masked_m"):
        return int(output.masked_m.sum())
    if hasattr(output, "origin_topk_ids"):
        return int(output.num_recv_tokens_per_expert.item())
    return int(output.hidden_states.shape[0])


def run_rank(layer: Layer, rank: int, world: int, iters: int, warmup: int) -> bool:
    """One rank's layer; prints its row and returns whether it is within tolerance."""
    import generated

    device = _rank_device(rank)
    local = layer.experts // world
    batch = emulate.make_batch(
        layer.tokens * world,
        layer.hidden,
        layer.experts,
        layer.top_k,
        ep_size=world,
        seed=layer.seed + 1,
        device=device,
    )
    rows = batch.tokens_slice(rank)
    weights = _local_weights(layer, rank, world, device)
    activation = layer_activation(layer.quant)
    config = batch.layer_config(rank, layer.intermediate, activation)
    runner = generated.select(layer.a2a, layer.quant, layer.dispatch)(config, weights)
    combined, received, phases = _timed_layers(layer, runner, batch, rows, device, iters, warmup)
    # The dense layer: each rank's experts' share of every token, summed over ranks.
    share = ep_oracle.expert_share(
        batch.hidden_states,
        batch.topk_ids,
        batch.topk_weights,
        weights,
        layer.quant,
        first_expert=rank * local,
        activation=activation,
    )
    dist.all_reduce(share)
    ok, row = _verdict(layer, rank, world, rows, received, combined, share[rows], phases)
    for r in range(world):  # one row at a time, in rank order
        dist.barrier()
        if r == rank:
            print(row, flush=True)
    return ok


def _rank_device(rank: int) -> torch.device:
    """NCCL (or --device cuda under gloo): rank r's GPU, r modulo the visible GPUs; else the CPU."""
    device = torch.device("cpu")
    if dist.get_backend() == "nccl" or os.environ.get("_MOE_EP_DEVICE") == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def _timed_layers(
    layer: Layer,
    runner: Callable[[Any], Any],
    batch: emulate.GlobalBatch,
    rows: slice,
    device: torch.device,
    iters: int,
    warmup: int,
) -> tuple[torch.Tensor, int, list[tuple[float, float, float]]]:
    """The last layer's combined rows, rows received, and each timed layer's (dispatch, experts,
    combine) seconds."""
    phases: list[tuple[float, float, float]] = []
    received = 0
    combined = torch.empty(0)
    for step in range(warmup + iters):
        dist.barrier()
        _sync(device)
        start = time.perf_counter()
        output, handle = dispatch(
            layer.dispatch,
            batch.hidden_states[rows],
            batch.topk_ids[rows],
            batch.topk_weights[rows],
            num_experts=layer.experts,
        )
        _sync(device)
        dispatched = time.perf_counter()
        combine_input = runner(output)
        _sync(device)
        computed = time.perf_counter()
        combined = combine(handle, combine_input)
        _sync(device)
        done = time.perf_counter()
        received = _received(output)
        if step >= warmup:
            phases.append((dispatched - start, computed - dispatched, done - computed))
    return combined, received, phases


def _verdict(
    layer: Layer,
    rank: int,
    world: int,
    rows: slice,
    received: int,
    combined: torch.Tensor,
    expected: torch.Tensor,
    phases: list[tuple[float, float, float]],
) -> tuple[bool, str]:
    """Whether this rank is within the path's tolerance, and the row it prints."""
    error = (combined.double() - expected).abs()
    rms = float(expected.pow(2).mean().sqrt())
    # The tests' comparer of a whole path with the dense MoE, by the path's coarsest rounding.
    problem = dense_mismatch(combined, expected, layer.quant, layer.dispatch)
    total = [sum(p) * 1e3 for p in phases]
    d, c, k = (statistics.median(p[i] for p in phases) * 1e3 for i in range(3))
    verdict = "ok" if problem is None else f"({problem}) FAIL"
    row = (
        f"rank {rank}/{world}: sent {rows.stop - rows.start} tokens, received {received} rows; "
        f"max |err| {float(error.max()):.3e} (output rms {rms:.3e}), dissimilarity "
        f"{dissimilarity(combined, expected):.2e} {verdict}; "
        f"layer {statistics.median(total):.2f} ms median of {len(total)} "
        f"(dispatch {d:.2f}, experts {c:.2f}, combine {k:.2f})"
    )
    return problem is None, row


def _worker(
    rank: int,
    world: int,
    backend: str,
    device: str,
    store: str,
    layer: Layer,
    iters: int,
    warmup: int,
    timeout: float,
    threads: int,
) -> None:
    os.environ["_MOE_EP_DEVICE"] = device
    if device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    torch.set_num_threads(threads)
    dist.init_process_group(
        backend,
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout),
    )
    try:
        ok = run_rank(layer, rank, world, iters, warmup)
    finally:
        dist.destroy_process_group()
    sys.exit(0 if ok else 1)


def _wait(processes: list[Any], deadline: float) -> list[int | None]:
    """Exit codes once all ranks are done; a rank that fails, or the deadline, stops the rest
    (its peers would otherwise wait in a collective until the process group's timeout)."""
    while time.monotonic() < deadline:
        codes = [p.exitcode for p in processes]
        if None not in codes or any(code not in (None, 0) for code in codes):
            break
        time.sleep(0.05)
    for process in processes:
        process.join(timeout=1.0)
    codes = [p.exitcode for p in processes]
    for process in processes:
        if process.exitcode is None:
            process.kill()
            process.join()
    return codes


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    layer = _check(args, parser)
    print(
        f"{layer.a2a}/{layer.quant}/{layer.dispatch}: H={layer.hidden} I={layer.intermediate} "
        f"E={layer.experts} K={layer.top_k}, {layer.tokens} tokens per rank, {args.nproc} ranks "
        f"on {args.backend} ({args.device})",
        flush=True,
    )
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun
        os.environ["_MOE_EP_DEVICE"] = args.device
        dist.init_process_group(args.backend, timeout=timedelta(seconds=args.timeout))
        ok = run_rank(layer, dist.get_rank(), dist.get_world_size(), args.iters, args.warmup)
        dist.destroy_process_group()
        return 0 if ok else 1
    # A forked child cannot use CUDA; spawned ones re-import torch (seconds) but can.
    method = "spawn" if args.device == "cuda" else "fork"
    context: Any = mp.get_context(method)
    # A forked rank runs single-threaded: GNU OpenMP's thread pool does not survive fork, and a
    # parallel region in the child of a parent that had used it hangs (seen with 2 threads).
    threads = 1 if method == "fork" else max(1, (os.cpu_count() or 1) // args.nproc)
    with tempfile.TemporaryDirectory(prefix="moe-ep-") as directory:
        store = os.path.join(directory, "store")
        processes = [
            context.Process(
                target=_worker,
                args=(
                    r,
                    args.nproc,
                    args.backend,
                    args.device,
                    store,
                    layer,
                    args.iters,
                    args.warmup,
                    args.timeout,
                    threads,
                ),
            )
            for r in range(args.nproc)
        ]
        for process in processes:
            process.start()
        codes = _wait(processes, deadline=time.monotonic() + args.timeout + 60)
    if codes != [0] * args.nproc:
        print(f"ranks' exit codes {codes} (None: killed at the deadline)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The DeepEP adapters on a real `deep_ep.Buffer`, with the generated runners: one layer per rank.

    python -m benchmarks.deepep_buffer --mode ll                      # one rank, one GPU
    torchrun --nproc-per-node 2 -m benchmarks.deepep_buffer --mode normal

DeepEP (deepseek-ai/DeepEP, built from its source: it is not a dependency of this project) is
imported only here. Every rank builds the same seeded batch and weights (`tests.runners.harness`),
dispatches its own tokens through `DeepEPLowLatency` (`--mode ll`, any number of ranks) or
`DeepEPNormal` (`--mode normal`: DeepEP's intranode kernels take 2, 4 or 8 ranks), runs the
generated runner of each combination on what arrives, combines, and prints one row per
combination: its tokens' largest difference from the single-process emulation, the verdict of
the float64 dense layer within the path's tolerance, the negative control (zeros must fail it),
and the median dispatch and combine times. First it compares `deep_ep.Buffer`'s five methods the
adapters call with the signatures of the fake the CPU tests use (tests/distributed/fakes.py). Exit
status 0 when the signatures are the same, every row is within tolerance and every control fails,
else 1. `benchmarks/deepep_build.sh` builds DeepEP from a source checkout.

Multicast stays off (NCCL_NVLS_ENABLE=0, NVSHMEM_DISABLE_NVLS=1, set before either starts).
DeepEP's low-latency kernels take H in {2048, 2560, 4096, 5120, 6144, 7168, 8192}: H is 2048.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

import generated
from moe_runtime.distributed.adapters import DeepEPLowLatency, DeepEPNormal
from tests.runners.harness import run_combination

HIDDEN, TOKENS, MAX_TOKENS, ITERS = 2048, 13, 16, 20
# mode -> (combination, whether the dispatch sends fp8)
KEYS = {
    "ll": [
        (("deepep", "unquant", "deepep_ll"), False),
        (("deepep", "fp8_block", "deepep_ll_fp8"), True),
    ],
    "normal": [
        (("deepep", "unquant", "deepep_normal"), False),
        (("deepep", "fp8_block", "deepep_normal"), False),
    ],
}


def _group() -> tuple[int, int]:
    """Join torchrun's group, or make a one-rank one; NVLink multicast off in NCCL and NVSHMEM
    (both read their environment when they start, below and in `deep_ep.Buffer`)."""
    for name in ("NCCL_NVLS_ENABLE", "NVSHMEM_DISABLE_NVLS", "TORCH_SYMM_MEM_DISABLE_MULTICAST"):
        os.environ[name] = "0" if name == "NCCL_NVLS_ENABLE" else "1"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl", rank=rank, world_size=world)
    return rank, world


def _buffer(mode: str, world: int, num_experts: int) -> Any:
    import deep_ep

    group = dist.group.WORLD
    if mode == "ll":
        rdma = deep_ep.Buffer.get_low_latency_rdma_size_hint(MAX_TOKENS, HIDDEN, world, num_experts)
        return deep_ep.Buffer(
            group, 0, rdma, low_latency_mode=True, num_qps_per_rank=num_experts // world
        )
    return deep_ep.Buffer(group, num_nvl_bytes=256 << 20)


def _median_us(step: Callable[[], Any]) -> float:
    samples = []
    for _ in range(ITERS):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def _run(mode: str, key: tuple[str, str, str], world: int) -> Any:
    return run_combination(
        key, world, device="cuda", tokens=TOKENS * world, hidden=HIDDEN,
        max_tokens_per_rank=MAX_TOKENS if mode == "ll" else None,
    )  # fmt: skip


def _layer(
    mode: str, key: tuple[str, str, str], use_fp8: bool, rank: int, world: int, buffer: Any
) -> bool:
    run = _run(mode, key, world)
    num_experts = run.configs[rank].num_experts
    adapter: Any = (
        DeepEPLowLatency(buffer, num_experts=num_experts, ep_size=world,
                         max_tokens_per_rank=MAX_TOKENS, use_fp8=use_fp8)
        if mode == "ll"
        else DeepEPNormal(buffer, num_experts=num_experts)
    )  # fmt: skip
    rows = run.batch.tokens_slice(rank)
    inputs = (run.batch.hidden_states[rows], run.batch.topk_ids[rows], run.batch.topk_weights[rows])
    runner = generated.select(*key)(run.configs[rank], run.weights[rank])
    output, handle = adapter.dispatch(*inputs)
    combine_input = runner(output)
    combined = adapter.combine(combine_input, handle)
    torch.cuda.synchronize()
    emulated = run.combined()[rows].to(combined.device)
    difference = (combined.float() - emulated.float()).abs().max().item()
    verdict = run.mismatch(key[1], key[2], _whole(run, rows, combined))
    control = run.mismatch(key[1], key[2], _whole(run, rows, torch.zeros_like(combined)))
    dispatch_us = _median_us(lambda: adapter.dispatch(*inputs))
    combine_us = _median_us(lambda: adapter.combine(combine_input, handle))
    # Low latency: [L, C, H] slabs, masked_m of each filled; normal: [R, H] rows.
    received = int(output.masked_m.sum()) if mode == "ll" else int(output.hidden_states.shape[0])
    print(
        f"rank {rank}/{world} {'/'.join(key)}: {rows.stop - rows.start} tokens, {received} rows "
        f"received; max |real - emulated| {difference:.3g}; dense "
        f"{'ok' if verdict is None else 'FAIL: ' + verdict}; control "
        f"{'fails as it must' if control is not None else 'PASSED (wrong)'}; "
        f"dispatch {dispatch_us:.1f} us, combine {combine_us:.1f} us",
        flush=True,
    )
    return verdict is None and control is not None


def _whole(run: Any, rows: slice, mine: torch.Tensor) -> torch.Tensor:
    """The whole layer's output with this rank's tokens replaced by `mine` (others emulated), so
    that the dense verdict is over the layer, and a wrong row of this rank shows."""
    whole: torch.Tensor = run.combined().clone()
    whole[rows] = mine.to(whole.device, whole.dtype)
    return whole


def _every(mode: str) -> list[tuple[tuple[str, str, str], bool]]:
    """Every generated runner of `deepep` in `mode`'s formats, fp8 where the wire is."""
    formats = {"ll": ("deepep_ll", "deepep_ll_fp8"), "normal": ("deepep_normal",)}[mode]
    found = [key for key in generated.RUNNERS if key[0] == "deepep" and key[2] in formats]
    return [(key, key[2].endswith("_fp8")) for key in sorted(found)]


def _same_signatures() -> bool:
    """Whether the fake DeepEP buffer's methods take exactly the real ones' parameters."""
    import deep_ep

    from tests.distributed.fakes import FakeDeepEPBuffer

    def shape(method: Any) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]

    names = ("get_dispatch_layout", "dispatch", "combine", "low_latency_dispatch",
             "low_latency_combine")  # fmt: skip
    real, fake = deep_ep.Buffer, FakeDeepEPBuffer
    differ = [n for n in names if shape(getattr(real, n)) != shape(getattr(fake, n))]
    verdict = "the same" if not differ else "DIFFERENT for " + ", ".join(differ)
    print(f"deep_ep from {deep_ep.__file__}: the fake's signatures: {verdict}", flush=True)
    return not differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(KEYS), required=True, help="DeepEP mode")
    parser.add_argument(
        "--all",
        action="store_true",
        help="every generated DeepEP runner of the mode (default: one bf16 and one fp8 one)",
    )
    args = parser.parse_args(argv)
    same = _same_signatures()
    rank, world = _group()
    keys = _every(args.mode) if args.all else KEYS[args.mode]
    # One buffer for every combination: NVSHMEM starts once per process.
    buffer = _buffer(args.mode, world, _run(args.mode, keys[0][0], world).configs[rank].num_experts)
    # Every combination runs (a list, not all()'s short circuit): each row is reported.
    ok = [_layer(args.mode, key, use_fp8, rank, world, buffer) for key, use_fp8 in keys]
    dist.destroy_process_group()
    return 0 if same and all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())

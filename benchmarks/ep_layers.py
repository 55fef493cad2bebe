"""Time MoE layers across real ranks (issue 12): `python -m moe_runtime.ep_run` over a few formats
and process groups, one fresh launch each, summarized as a markdown table.

    python benchmarks/ep_layers.py --device cpu                 # gloo, 2 and 4 ranks
    python benchmarks/ep_layers.py --device cuda --preset qwen3-30b-a3b --tokens 128
        # gloo with CUDA tensors at 2 and 4 ranks on one GPU, NCCL at 1 rank

Each row is the slowest rank's median layer time (dispatch + generated runner + combine, after a
barrier; CUDA synchronized around each phase), its phases, and the worst dissimilarity
1 - 2*sum(xy)/sum(x^2+y^2) against the float64 layer over all ranks (the tests' measure: each
rank is judged by moe_runtime.testing.dense.dense_mismatch). On one GPU every rank shares the
card, so these time the transport and the per-rank work, not a multi-GPU deployment.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

CASES = (
    ("deepep", "unquant", "deepep_normal"),
    ("deepep", "fp8_block", "deepep_ll_fp8"),
    ("mori", "fp8_block", "mori_normal_fp8"),
)
# One rank's row as moe_runtime.ep_run prints it (tests/distributed/test_ep_run.py holds it to it).
ROW = re.compile(
    r"rank (\d+)/(\d+):.*dissimilarity ([0-9.e+-]+) .*layer ([0-9.]+) ms median of \d+ "
    r"\(dispatch ([0-9.]+), experts ([0-9.]+), combine ([0-9.]+)\)"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per rank")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per launch")
    args = parser.parse_args()
    groups = [("gloo", 2), ("gloo", 4)] + ([("nccl", 1)] if args.device == "cuda" else [])
    print(
        f"preset {args.preset}, {args.tokens} tokens per rank, {args.iters} timed layers, "
        f"device {args.device}\n"
    )
    print(
        "| backend | ranks | a2a/quant/dispatch | layer ms (slowest rank) | dispatch | experts "
        "| combine | max dissimilarity | launch s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    failed = 0
    for backend, nproc in groups:
        for key in CASES:
            command = [
                sys.executable,
                "-m",
                "moe_runtime.ep_run",
                "--nproc",
                str(nproc),
                "--a2a",
                key[0],
                "--quant",
                key[1],
                "--dispatch",
                key[2],
                "--backend",
                backend,
                "--device",
                args.device,
                "--preset",
                args.preset,
                "--tokens",
                str(args.tokens),
                "--iters",
                str(args.iters),
                "--warmup",
                "2",
            ]
            start = time.monotonic()
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=args.timeout, check=False
                )
                out, code = done.stdout + done.stderr, done.returncode
            except subprocess.TimeoutExpired:
                out, code = "timed out", -1
            elapsed = time.monotonic() - start
            rows = [m.groups() for m in ROW.finditer(out)]
            if code != 0 or len(rows) != nproc:
                failed += 1
                print(
                    f"| {backend} | {nproc} | {'/'.join(key)} | FAILED (exit {code}) "
                    f"| | | | | {elapsed:.1f} |"
                )
                print(out[-2000:], file=sys.stderr)
                continue
            slowest = max(rows, key=lambda r: float(r[3]))
            worst = max(float(r[2]) for r in rows)
            print(
                f"| {backend} | {nproc} | {'/'.join(key)} | {float(slowest[3]):.2f} | "
                f"{float(slowest[4]):.2f} | {float(slowest[5]):.2f} | {float(slowest[6]):.2f} "
                f"| {worst:.2e} | {elapsed:.1f} |",
                flush=True,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Generator wall times on this machine: `--check`, a full write with a warm and a cold mypy cache.

    python benchmarks/generate.py [--repeat 5]

Prints a markdown table (and the machine) for benchmarks/RESULTS.md. Each run is a fresh
`python -m generator` process, as a user or CI runs it; the write runs go to a temporary directory
named `generated` (so they share the mypy cache of the real one) and never touch the repository's.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "generator", "--matrix", "schema/amd.yaml", *args],
        cwd=REPO, env=env, check=True, capture_output=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "cache"
        out = Path(scratch) / "generated"
        env = {**os.environ, "GENERATOR_CACHE_DIR": str(cache)}
        check = [timed(["--check"], env) for _ in range(args.repeat)]
        cold = []
        for _ in range(max(1, args.repeat // 2)):
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            cold.append(timed(["--out", str(out)], env))
        warm = []
        for _ in range(args.repeat):
            shutil.rmtree(out)
            warm.append(timed(["--out", str(out)], env))
        modules = len([p for p in out.glob("*.py") if p.name != "__init__.py"])
    cpu = platform.processor() or platform.machine()
    print(f"Machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}\n")
    print("| measurement | median (s) | min (s) | runs | target |")
    print("|---|---|---|---|---|")
    for name, values, target in (
        ("`--check` (up to date)", check, "<= 1 s"),
        ("full write, warm mypy cache", warm, "<= 5 s"),
        ("full write, cold mypy cache", cold, "none"),
    ):
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {len(values)} "
              f"| {target} |")
    print(f"\nModules generated: {modules} runner modules + `__init__.py` + `py.typed`.")


if __name__ == "__main__":
    main()

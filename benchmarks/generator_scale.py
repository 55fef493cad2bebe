"""How the generator scales with the matrix: `--check` on N formats, and D duplicate exclusions.

    python -m benchmarks.generator_scale --formats 10000 --duplicates 4000

Builds a synthetic matrix in a temporary directory (one backend listing N copies of
`deepep_normal`, one quant method: N runner modules), writes its tree once through the library
(setup, untimed, unverified), then times `--check` on the up-to-date tree; separately times a
matrix whose one exclusion is repeated D times (every repeat is a "removes nothing" error) and
measures the stderr it writes. Each timed run is a fresh `python -m generator` subprocess, as a
user or CI would start it. CPU only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_FORMAT = """\
  f{index}:
    description: Copy {index} of deepep_normal.
    dispatch_output: DeepEPNormalDispatchOutput
    combine_input: DeepEPNormalCombineInput
    layout: flat
    id_space: local_with_minus_one
    sink: local
    row_count: shape
    wire: bf16
    weighting: kernel
    truncate_to_recv_cap: false
"""
_QUANT = """\
quant_methods:
  unquant:
    description: Unquantized bf16 weights.
    kernel_quant: "No"
    activation: layer
    weight_kind: bf16
    weight_dtype: bfloat16
    has_weight_scales: false
    has_biases: false
    static_input_scales: false
    pads_hidden: false
    router_weight_in_stage1: false
  fp8_block:
    description: Block fp8.
    kernel_quant: per_128x128
    activation: layer
    weight_kind: fp8
    weight_dtype: float8_e4m3fn
    has_weight_scales: true
    has_biases: false
    static_input_scales: false
    pads_hidden: false
    router_weight_in_stage1: false
"""


def scale_matrix(formats: int, duplicates: int = 0) -> str:
    """N formats for one backend; `duplicates` > 0 adds that many copies of one exclusion (and
    the second quant method it excludes), so every copy after the first is an error."""
    names = ", ".join(f"f{i}" for i in range(formats))
    lines = [
        "a2a_backends:",
        "  deepep:",
        "    description: Synthetic backend.",
        f"    formats: [{names}]",
        "dispatch_formats:",
        *(_FORMAT.format(index=i).rstrip("\n") for i in range(formats)),
    ]
    quant = _QUANT if duplicates else _QUANT.split("  fp8_block:")[0]
    lines.append(quant.rstrip("\n"))
    if duplicates:
        lines.append("exclusions:")
        lines += [
            "  - {a2a: deepep, quant: fp8_block, dispatch: '*', reason: duplicated.}"
        ] * duplicates
    else:
        lines.append("exclusions: []")
    return "\n".join(lines) + "\n"


def _write_unverified(matrix: Path, out: Path) -> None:
    from generator.combinations import enumerate_combinations, excluded_combinations
    from generator.loader import load_matrix
    from generator.pipeline import display_path
    from generator.plan import plan_combination
    from generator.render import Inputs, render_all
    from generator.writer import write_tree

    model = load_matrix(matrix)
    plans = [plan_combination(model, c) for c in enumerate_combinations(model)]
    inputs = Inputs(display_path(matrix), matrix.read_bytes())
    write_tree(out, render_all(plans, excluded_combinations(model), inputs))


def _generator(*args: str | Path, cwd: Path) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "generator", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        check=False,
    )
    return time.perf_counter() - started, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", type=int, default=10_000)
    parser.add_argument("--duplicates", type=int, default=4_000)
    args = parser.parse_args()
    os.chdir(REPO)  # headers name the matrix relative to the working directory, as the CLI does
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        matrix = root / "scale.yaml"
        matrix.write_text(scale_matrix(args.formats))
        out = root / "gen_scale"
        started = time.perf_counter()
        _write_unverified(matrix, out)
        seconds = time.perf_counter() - started
        size = matrix.stat().st_size
        print(f"setup: {args.formats} formats ({size} bytes) written in {seconds:.1f} s")
        seconds, done = _generator("--matrix", matrix, "--out", out, "--check", cwd=REPO)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        print(f"--check {args.formats} formats, up to date: {seconds:.1f} s")

        dup = root / "duplicates.yaml"
        dup.write_text(scale_matrix(3, duplicates=args.duplicates))
        seconds, done = _generator("--matrix", dup, "--check", "--out", out, cwd=REPO)
        assert done.returncode == 2, done.stderr.decode()[-2000:]
        print(
            f"{args.duplicates} duplicate exclusions: {seconds:.1f} s, exit 2, "
            f"{len(done.stderr)} bytes of stderr, last line: "
            f"{done.stderr.decode().splitlines()[-1]}"
        )


if __name__ == "__main__":
    main()

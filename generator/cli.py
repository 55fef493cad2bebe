"""Command line: `python -m generator --matrix PATH [--out DIR] [--check] [--list] [--explain K]`.

Exit codes (DESIGN.md): 0 written or up to date; 1 `--check` found stale, missing or orphaned
files; 2 invalid matrix or usage; 3 rendered code failed verification (nothing under --out changed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from generator.combinations import enumerate_combinations, excluded_combinations
from generator.diagnostics import MatrixError, closest
from generator.explain import explain_plan, list_combinations
from generator.loader import load_matrix
from generator.model import Combination, Exclusion, Matrix
from generator.naming import module_name
from generator.plan import Plan, plan_combination
from generator.render import Inputs, TemplateProblem, render_all
from generator.writer import check_tree, generator_lock, write_tree

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "generated"
EXIT_OK, EXIT_STALE, EXIT_INVALID, EXIT_UNVERIFIED = 0, 1, 2, 3

_EPILOG = """\
exit codes:
  0  written, or up to date under --check
  1  --check found stale, missing or orphaned files (a capped diff and the fixing command follow)
  2  invalid matrix or usage (path:line:col: error: ... on stderr)
  3  rendered code failed verification (LibCST branch-free rule or mypy --strict);
     nothing under --out changed

environment:
  GENERATOR_CACHE_DIR  where the lock, the staging tree and mypy's cache live
                       (default: .generator-cache/ at the repository root)

examples:
  python -m generator --matrix schema/amd.yaml            regenerate generated/
  python -m generator --matrix schema/amd.yaml --check    fail if generated/ is stale (CI)
  python -m generator --matrix schema/amd.yaml --list     every combination and module name
  python -m generator --matrix schema/amd.yaml --explain mori/fp8_block/mori_normal_fp8
"""


class UsageError(Exception):
    """A command-line problem: reported like argparse's own, exit 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m generator",
        description=(
            "Generate one specialized, branch-free AITER fused_moe runner module per "
            "(a2a backend, quant method, dispatch format) of a backend matrix, plus the "
            "dispatch table generated/__init__.py. Files are written only after every module "
            "passed the LibCST branch-free check and mypy --strict."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--matrix", required=True, metavar="PATH", help="the backend matrix (YAML)")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="output package directory (default: generated/ at the repository root)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 and print a diff if --out differs from what would be written",
    )
    mode.add_argument(
        "--list",
        action="store_true",
        help="print every combination with its module name, and the excluded ones with reasons",
    )
    mode.add_argument(
        "--explain",
        metavar="A2A/QUANT/DISPATCH",
        help="print every specialization decision of one combination, with its reason",
    )
    parser.add_argument(
        "--no-typecheck",
        action="store_true",
        help="skip mypy --strict over the rendered modules (the LibCST check still runs)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except MatrixError as error:
        for diagnostic in error.diagnostics:
            print(diagnostic, file=sys.stderr)
        count = len(error.diagnostics)
        print(f"{count} error{'s' if count != 1 else ''}; nothing written", file=sys.stderr)
        return EXIT_INVALID
    except UsageError as error:
        print(f"python -m generator: error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted; nothing under --out changed", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    matrix = load_matrix(args.matrix)
    combinations = enumerate_combinations(matrix)
    excluded = excluded_combinations(matrix)
    if args.list:
        print(list_combinations(combinations, excluded), end="")
        return EXIT_OK
    if args.explain is not None:
        combination = _parse_key(args.explain, matrix, combinations, excluded)
        print(explain_plan(plan_combination(matrix, combination)), end="")
        return EXIT_OK

    out_dir = Path(args.out) if args.out is not None else DEFAULT_OUT
    plans = [plan_combination(matrix, combination) for combination in combinations]
    inputs = Inputs(_display_path(args.matrix), Path(args.matrix).read_bytes())
    try:
        files = render_all(plans, excluded, inputs)
    except TemplateProblem as error:
        print(f"error: {error}\nnothing under {out_dir} changed", file=sys.stderr)
        return EXIT_UNVERIFIED
    if args.check:
        return _check(out_dir, files, args)
    return _write(out_dir, files, plans, typecheck=not args.no_typecheck)


def _check(out_dir: Path, files: dict[str, str], args: argparse.Namespace) -> int:
    report = check_tree(out_dir, files)
    if not report.changes:
        print(f"{_shown(out_dir)}: up to date ({len(files)} files)")
        return EXIT_OK
    sys.stdout.write(report.diff)
    for change in report.changes:
        print(f"{change.kind}: {_shown(out_dir / change.path)}", file=sys.stderr)
    fix = f"python -m generator --matrix {args.matrix}"
    if args.out is not None:
        fix += f" --out {args.out}"
    print(
        f"{_shown(out_dir)} is out of date ({len(report.changes)} files); to fix, run:\n  {fix}",
        file=sys.stderr,
    )
    return EXIT_STALE


def _write(out_dir: Path, files: dict[str, str], plans: list[Plan], *, typecheck: bool) -> int:
    # LibCST takes a third of a second to import: only writing needs it, --check stays fast.
    from generator.verify import MypyError, check_branch_free, run_mypy

    started = time.monotonic()
    violations = [
        str(violation)
        for plan in plans
        for violation in check_branch_free(
            f"{out_dir.name}.{plan.module_name}", files[f"{plan.module_name}.py"]
        )
    ]
    if violations:
        return _unverified("LibCST branch-free check", violations, out_dir)
    cache_dir = Path(os.environ.get("GENERATOR_CACHE_DIR", REPO_ROOT / ".generator-cache"))
    with generator_lock(cache_dir):
        if typecheck:
            staging = cache_dir / "staging" / out_dir.name
            write_tree(staging, files)
            try:
                errors = run_mypy(
                    staging.parent,
                    [out_dir.name],
                    cache_dir=cache_dir / "mypy",
                    extra_paths=[REPO_ROOT],
                )
            except MypyError as error:
                errors = [f"mypy could not run: {error}"]
            if errors:
                return _unverified("mypy --strict", errors, out_dir)
        changes = write_tree(out_dir, files)
    elapsed = time.monotonic() - started
    summary = ", ".join(
        f"{sum(c.kind == kind for c in changes)} {label}"
        for kind, label in (("missing", "added"), ("stale", "updated"), ("orphaned", "removed"))
    )
    print(
        f"{_shown(out_dir)}: {len(plans)} runner modules; {summary}; "
        f"verified{'' if typecheck else ' (LibCST only)'} in {elapsed:.1f}s"
    )
    return EXIT_OK


def _unverified(check: str, problems: list[str], out_dir: Path) -> int:
    for problem in problems:
        print(problem, file=sys.stderr)
    print(
        f"{check} failed ({len(problems)} problems); nothing under {_shown(out_dir)} changed",
        file=sys.stderr,
    )
    return EXIT_UNVERIFIED


def _parse_key(
    text: str,
    matrix: Matrix,
    combinations: Sequence[Combination],
    excluded: Sequence[tuple[Combination, Exclusion]],
) -> Combination:
    parts = text.split("/")
    if len(parts) != 3:
        raise UsageError(f"--explain takes A2A/QUANT/DISPATCH, got {text!r}")
    combination = Combination(*parts)
    if combination in combinations:
        return combination
    for excluded_combination, exclusion in excluded:
        if excluded_combination == combination:
            raise UsageError(f"{text} is excluded by {matrix.path}: {exclusion.reason}")
    names = [module_name(c) for c in combinations]
    match = closest(module_name(combination), names)
    hint = f"; did you mean {match.replace('__', '/')!r}?" if match else ""
    raise UsageError(f"{text} is not a combination of {matrix.path}{hint}")


def _display_path(path: str) -> str:
    """The matrix path as headers show it: relative to the repository, never absolute."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return Path(os.path.relpath(resolved, Path.cwd())).as_posix()


def _shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)

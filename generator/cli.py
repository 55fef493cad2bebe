"""Command line: `python -m generator --matrix PATH [--out DIR] [--check] [--list] [--explain K]`.

Exit codes (DESIGN.md): 0 written or up to date; 1 `--check` found stale, missing or orphaned
files; 2 invalid matrix, usage or environment (an unusable --out or cache directory, any OS error:
one line naming the path and the cause); 3 rendered code failed verification (nothing under --out
changed). An interrupt (SIGINT, SIGTERM) exits 128 + the signal's number with a line saying
whether --out is as it was or holds the complete new tree.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import keyword
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from generator.combinations import enumerate_combinations, excluded_combinations
from generator.diagnostics import MatrixError, closest
from generator.explain import explain_plan, list_combinations
from generator.loader import parse_matrix, read_matrix
from generator.model import Combination, Exclusion, Matrix
from generator.naming import module_name
from generator.plan import Plan, plan_combination
from generator.render import Inputs, TemplateProblem, render_all
from generator.writer import (
    MANIFEST_NAME,
    NotOurs,
    Phase,
    check_tree,
    generator_lock,
    signal_pending,
    write_tree,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "generated"
EXIT_OK, EXIT_STALE, EXIT_INVALID, EXIT_UNVERIFIED = 0, 1, 2, 3
# Past this many problems (diagnostics, verification errors, changed files) only a count is shown.
PROBLEM_LIMIT = 50
# Test hook: pause at this write phase (staging, staged, committed) until a signal arrives.
PAUSE_ENV = "GENERATOR_TEST_PAUSE_AT"

_EPILOG = """\
exit codes:
  0  written, or up to date under --check
  1  --check found stale, missing or orphaned files (a capped diff and the fixing command follow)
  2  invalid matrix or usage (path:line:col: error: ... on stderr), or an environment
     problem: an --out that is no directory, not writable, no importable package name, a
     name that shadows an installed module, a directory holding files this generator did
     not write; an unusable cache directory; any OS error (one line: path and cause)
  3  rendered code failed verification (compile, LibCST branch-free rule, mypy --strict,
     import of the staged package); nothing under --out changed
  130, 143  interrupted by SIGINT, SIGTERM; the last line says what state --out is in

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


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; raised where the main thread is, like KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Progress:
    """Where a write stands, for the message after an interrupt; pauses for the tests' hook."""

    def __init__(self) -> None:
        self.out_dir: Path | None = None
        self.committed = False

    def __call__(self, phase: Phase) -> None:
        if phase == "committed":
            self.committed = True
        if os.environ.get(PAUSE_ENV) == phase:
            print(f"paused at {phase}", file=sys.stderr, flush=True)
            deadline = time.monotonic() + 60
            while not signal_pending() and time.monotonic() < deadline:
                time.sleep(0.02)

    def interrupted(self) -> str:
        if self.out_dir is None or not self.committed:
            return "interrupted; nothing under --out changed"
        return (
            f"interrupted after the new tree was switched in: {_shown(self.out_dir)} holds "
            "the complete new tree"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m generator",
        description=(
            "Generate one specialized, branch-free AITER fused_moe runner module per "
            "(a2a backend, quant method, dispatch format) of a backend matrix, plus the "
            "dispatch table generated/__init__.py. Files are written only after every module "
            "compiled and passed the LibCST branch-free check and mypy --strict, and the staged "
            "package imported; the new tree then replaces the old one at once."
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
    progress = _Progress()
    previous = _raise_on_sigterm()
    try:
        return _run(args, progress)
    except MatrixError as error:
        _print_capped([str(d) for d in error.diagnostics], "errors")
        count = len(error.diagnostics)
        print(f"{count} error{'s' if count != 1 else ''}; nothing written", file=sys.stderr)
        return EXIT_INVALID
    except (UsageError, NotOurs) as error:
        print(f"python -m generator: error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as error:
        print(f"python -m generator: error: {_os_error(error)}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt as interrupt:
        print(progress.interrupted(), file=sys.stderr)
        signum = interrupt.signum if isinstance(interrupt, Interrupted) else signal.SIGINT
        return 128 + signum
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_on_sigterm() -> signal._HANDLER:
    """Make SIGTERM unwind like Ctrl-C, so a write in progress cleans up; the old handler."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signum)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _os_error(error: OSError) -> str:
    """One line: the path and the cause."""
    cause = error.strerror or str(error)
    if error.filename is not None:
        return f"{os.fsdecode(error.filename)}: {cause}"
    return cause


def _print_capped(problems: Sequence[str], noun: str) -> None:
    for problem in problems[:PROBLEM_LIMIT]:
        print(problem, file=sys.stderr)
    if len(problems) > PROBLEM_LIMIT:
        print(f"... and {len(problems) - PROBLEM_LIMIT} more {noun}", file=sys.stderr)


def _run(args: argparse.Namespace, progress: _Progress) -> int:
    data = read_matrix(args.matrix)  # once: a FIFO can be read only once
    matrix = parse_matrix(args.matrix, data)
    combinations = enumerate_combinations(matrix)
    excluded = excluded_combinations(matrix)
    if args.list:
        print(list_combinations(combinations, excluded), end="")
        return EXIT_OK
    if args.explain is not None:
        combination = _parse_key(args.explain, matrix, combinations, excluded)
        print(explain_plan(plan_combination(matrix, combination)), end="")
        return EXIT_OK

    out_dir = _out_dir(args.out)
    plans = [plan_combination(matrix, combination) for combination in combinations]
    inputs = Inputs(_display_path(args.matrix), data)
    try:
        files = render_all(plans, excluded, inputs)
    except TemplateProblem as error:
        print(f"error: {error}\nnothing under {out_dir} changed", file=sys.stderr)
        return EXIT_UNVERIFIED
    if args.check:
        return _check(out_dir, files, args)
    progress.out_dir = out_dir
    return _write(out_dir, files, plans, progress, typecheck=not args.no_typecheck)


# Names the generated package must not take: importing it would hide these.
_RESERVED = frozenset({"generator", "moe_runtime", "tests", "benchmarks"})


def _out_dir(given: str | None) -> Path:
    """--out as an absolute path (symbolic links kept), checked before anything is rendered."""
    if given is None:
        return DEFAULT_OUT
    out_dir = Path(os.path.abspath(given))
    name = out_dir.name
    if not name.isidentifier() or keyword.iskeyword(name):
        raise UsageError(
            f"--out {given}: the directory name {name!r} cannot be imported as a package "
            "(it must be a Python identifier such as gen_runners)"
        )
    if out_dir.is_symlink():
        target = os.readlink(out_dir)
        state = "" if out_dir.exists() else ", which does not exist"
        raise UsageError(
            f"--out {given} is a symbolic link (to {target}{state}); pass a real directory"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {given} is a file, not a directory")
    ancestor = out_dir.parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"--out {given}: {ancestor} is not a directory")
    writable = out_dir if out_dir.exists() else ancestor
    if not os.access(writable, os.W_OK | os.X_OK):
        raise UsageError(f"--out {given}: {writable} is not writable")
    if name != DEFAULT_OUT.name:
        shadowed = _installed_location(name, out_dir)
        if name in _RESERVED or shadowed is not None:
            where = f" (at {shadowed})" if shadowed else ""
            raise UsageError(
                f"--out {given}: a package named {name!r} would shadow the module of that name "
                f"this project imports{where}; choose another directory name"
            )
    return out_dir


def _installed_location(name: str, out_dir: Path) -> str | None:
    """Where an importable module `name` lives, unless that is `out_dir` itself."""
    if name in sys.builtin_module_names:
        return "built in"
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = [*(spec.submodule_search_locations or ()), spec.origin or ""]
    if any(
        location and Path(location) in (out_dir, out_dir / "__init__.py") for location in locations
    ):
        return None
    return spec.origin or next(iter(spec.submodule_search_locations or ()), name)


def _check(out_dir: Path, files: dict[str, str], args: argparse.Namespace) -> int:
    report = check_tree(out_dir, files)
    for name in report.foreign:
        print(
            f"foreign: {_shown(out_dir / name)} (not written by this generator; left alone)",
            file=sys.stderr,
        )
    if not report.changes:
        print(f"{_shown(out_dir)}: up to date ({len(files)} files and {MANIFEST_NAME})")
        return EXIT_OK
    sys.stdout.write(report.diff)
    _print_capped([f"{c.kind}: {_shown(out_dir / c.path)}" for c in report.changes], "files")
    fix = f"python -m generator --matrix {args.matrix}"
    if args.out is not None:
        fix += f" --out {args.out}"
    print(
        f"{_shown(out_dir)} is out of date ({len(report.changes)} files); to fix, run:\n  {fix}",
        file=sys.stderr,
    )
    return EXIT_STALE


def _write(
    out_dir: Path,
    files: dict[str, str],
    plans: list[Plan],
    progress: _Progress,
    *,
    typecheck: bool,
) -> int:
    # LibCST takes a third of a second to import: only writing needs it, --check stays fast.
    from generator.verify import (
        ImportCheckError,
        MypyError,
        check_branch_free,
        check_import,
        compile_errors,
        run_mypy,
    )

    started = time.monotonic()
    syntax = [e for name, text in files.items() for e in compile_errors(out_dir.name, name, text)]
    if syntax:
        return _unverified("compile", syntax, out_dir)
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
    lock = contextlib.ExitStack()
    try:
        lock.enter_context(generator_lock(cache_dir))
    except OSError as error:
        raise UsageError(
            f"cannot use the cache directory {cache_dir} (GENERATOR_CACHE_DIR): {_os_error(error)}"
        ) from None
    with lock:
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
            try:
                errors = check_import(staging.parent, out_dir.name, extra_paths=[REPO_ROOT])
            except ImportCheckError as error:
                errors = [f"the import check could not run: {error}"]
            if errors:
                return _unverified("import of the staged package", errors, out_dir)
        changes = write_tree(out_dir, files, phase=progress)
    elapsed = time.monotonic() - started
    counts = {
        kind: sum(c.kind == kind for c in changes) for kind in ("missing", "stale", "orphaned")
    }
    unchanged = len(files) + 1 - counts["missing"] - counts["stale"]
    print(
        f"{_shown(out_dir)}: {len(plans)} runner modules, __init__.py, py.typed and "
        f"{MANIFEST_NAME}: {counts['missing']} added, {counts['stale']} updated, "
        f"{unchanged} unchanged, {counts['orphaned']} removed; "
        f"verified{'' if typecheck else ' (compiled and LibCST only, not imported)'} "
        f"in {elapsed:.1f}s"
    )
    return EXIT_OK


def _unverified(check: str, problems: list[str], out_dir: Path) -> int:
    _print_capped(problems, "problems")
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

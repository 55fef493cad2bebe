"""Command line: `python -m generator --matrix PATH [--out DIR] [--check] [--list] [--explain K]`.

It parses the arguments, calls generator/pipeline.py and prints the result. Exit codes (as the
README states them): 0 written or up to date; 1 `--check` found stale, missing or orphaned files, or
a stale schema/matrix.schema.json; 2 invalid matrix, usage or environment (an unusable --out or
cache directory, any OS error: one line naming the path and the cause); 3 rendered code failed
verification (nothing under --out changed). An interrupt (SIGINT, SIGTERM) exits 128 + the signal's
number with a line saying whether --out is as it was or holds the complete new tree.
"""

from __future__ import annotations

import argparse
import importlib.util
import keyword
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from generator.diagnostics import MatrixError, closest
from generator.explain import explain_plan, list_combinations
from generator.fragments import TemplateProblem
from generator.json_schema import SCHEMA_PATH
from generator.model import Combination
from generator.naming import module_name
from generator.pipeline import (
    DEFAULT_CACHE_DIR,
    REPO_ROOT,
    CacheUnusable,
    Checked,
    Loaded,
    Mode,
    Options,
    Rendered,
    Unverified,
    Written,
    generate,
    load,
)
from generator.plan import plan_combination
from generator.writer import MANIFEST_NAME, NotOurs, Phase

DEFAULT_OUT = REPO_ROOT / "generated"
EXIT_OK, EXIT_STALE, EXIT_INVALID, EXIT_UNVERIFIED = 0, 1, 2, 3
# Past this many problems (diagnostics, verification errors, changed files) only a count is shown.
PROBLEM_LIMIT = 50

_EPILOG = """\
exit codes:
  0  written, or up to date under --check
  1  --check found stale, missing or orphaned files (a capped diff and the fixing command follow),
     or a schema/matrix.schema.json that differs from the one the model states (it is generated)
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
    """Where a write stands, for the message after an interrupt."""

    def __init__(self) -> None:
        self.out_dir: Path | None = None
        self.committed = False

    def __call__(self, phase: Phase) -> None:
        if phase == "committed":
            self.committed = True

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
            "dispatch table generated/__init__.py, and schema/matrix.schema.json from the "
            "matrix model. Files are written only after every module "
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
    except CacheUnusable as unusable:
        print(
            f"python -m generator: error: cannot use the cache directory {unusable.cache_dir} "
            f"(GENERATOR_CACHE_DIR): {_os_error(unusable.error)}",
            file=sys.stderr,
        )
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
    loaded = load(args.matrix)
    if args.list:
        enumeration = loaded.enumeration
        print(list_combinations(enumeration.generated, enumeration.excluded), end="")
        return EXIT_OK
    if args.explain is not None:
        combination = _parse_key(args.explain, loaded)
        print(explain_plan(plan_combination(loaded.matrix, combination)), end="")
        return EXIT_OK
    out_dir = _out_dir(args.out)
    progress.out_dir = out_dir
    options = Options(
        typecheck=not args.no_typecheck,
        cache_dir=Path(os.environ.get("GENERATOR_CACHE_DIR", DEFAULT_CACHE_DIR)),
        schema=SCHEMA_PATH,
        on_phase=progress,
    )
    try:
        result = generate(loaded, out_dir, Mode.CHECK if args.check else Mode.WRITE, options)
    except TemplateProblem as error:
        print(f"error: {error}\nnothing under {out_dir} changed", file=sys.stderr)
        return EXIT_UNVERIFIED
    match result:
        case Checked():
            return _report_check(out_dir, result, args)
        case Written():
            return _report_write(out_dir, result)
        case Unverified():
            return _report_unverified(out_dir, result)
        case Rendered():
            raise AssertionError("the CLI never asks for a dry run")


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


def _report_check(out_dir: Path, result: Checked, args: argparse.Namespace) -> int:
    report = result.report
    for name in report.foreign:
        print(
            f"foreign: {_shown(out_dir / name)} (not written by this generator; left alone)",
            file=sys.stderr,
        )
    fix = f"python -m generator --matrix {args.matrix}"
    if args.out is not None:
        fix += f" --out {args.out}"
    if not result.schema_current:
        print(
            f"{_shown(SCHEMA_PATH)} is out of date: it is generated from generator/model.py, not "
            f"edited by hand; to fix, run:\n  {fix}",
            file=sys.stderr,
        )
    if not report.changes:
        print(f"{_shown(out_dir)}: up to date ({len(result.files)} files and {MANIFEST_NAME})")
        return EXIT_OK if result.up_to_date else EXIT_STALE
    sys.stdout.write(report.diff)
    _print_capped([f"{c.kind}: {_shown(out_dir / c.path)}" for c in report.changes], "files")
    print(
        f"{_shown(out_dir)} is out of date ({len(report.changes)} files); to fix, run:\n  {fix}",
        file=sys.stderr,
    )
    return EXIT_STALE


def _report_write(out_dir: Path, result: Written) -> int:
    counts = {
        kind: sum(c.kind == kind for c in result.changes)
        for kind in ("missing", "stale", "orphaned")
    }
    unchanged = len(result.files) + 1 - counts["missing"] - counts["stale"]
    print(
        f"{_shown(out_dir)}: {result.modules} runner modules, __init__.py, FEATURES.md, "
        f"py.typed and {MANIFEST_NAME}: {counts['missing']} added, {counts['stale']} updated, "
        f"{unchanged} unchanged, {counts['orphaned']} removed; "
        f"verified{'' if result.typechecked else ' (compiled and LibCST only, not imported)'} "
        f"in {result.seconds:.1f}s"
    )
    if result.schema_written:
        print(f"{_shown(SCHEMA_PATH)}: regenerated from generator/model.py")
    return EXIT_OK


def _report_unverified(out_dir: Path, result: Unverified) -> int:
    _print_capped(result.problems, "problems")
    print(
        f"{result.check} failed ({len(result.problems)} problems); nothing under "
        f"{_shown(out_dir)} changed",
        file=sys.stderr,
    )
    return EXIT_UNVERIFIED


def _parse_key(text: str, loaded: Loaded) -> Combination:
    parts = text.split("/")
    if len(parts) != 3:
        raise UsageError(f"--explain takes A2A/QUANT/DISPATCH, got {text!r}")
    combination = Combination(*parts)
    combinations = loaded.enumeration.generated
    if combination in combinations:
        return combination
    for excluded_combination, exclusion in loaded.enumeration.excluded:
        if excluded_combination == combination:
            raise UsageError(f"{text} is excluded by {loaded.matrix.path}: {exclusion.reason}")
    names = [module_name(c) for c in combinations]
    match = closest(module_name(combination), names)
    hint = f"; did you mean {match.replace('__', '/')!r}?" if match else ""
    raise UsageError(f"{text} is not a combination of {loaded.matrix.path}{hint}")


def _shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)

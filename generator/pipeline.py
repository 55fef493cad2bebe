"""The generator as one library call: `generate(load(path), out, Mode.WRITE)`.

`load` reads and validates a matrix once (with its enumeration); `generate` plans and renders
every combination, then, by mode, writes the verified tree and schema/matrix.schema.json, checks
both for drift, or returns what would be written. It returns a result for the caller to report
(the CLI prints it) and raises MatrixError, TemplateProblem, NotOurs, CacheUnusable or OSError.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from generator import json_schema, verify
from generator.combinations import Enumeration
from generator.loader import parse_enumerated, read_matrix
from generator.model import Matrix
from generator.plan import Plan, plan_combination
from generator.render import Inputs, render_all
from generator.writer import (
    Change,
    CheckReport,
    Phase,
    check_tree,
    generator_lock,
    signal_pending,
    write_tree,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE_DIR = REPO_ROOT / ".generator-cache"
# Test hook, read only by `_pause_for_tests`: pause at this write phase (staging, staged,
# committed) until a signal arrives, so tests can interrupt a write at a known point.
PAUSE_ENV = "GENERATOR_TEST_PAUSE_AT"


class Mode(Enum):
    WRITE = "write"  # verify, then write the tree and the schema
    CHECK = "check"  # write nothing; report what differs from what WRITE would write
    DRY_RUN = "dry-run"  # render only: nothing verified, nothing touched


@dataclass(frozen=True, slots=True)
class Loaded:
    """A validated matrix, its enumeration, and the inputs every generated file depends on."""

    matrix: Matrix
    enumeration: Enumeration
    inputs: Inputs


@dataclass(frozen=True, slots=True)
class Options:
    typecheck: bool = True  # mypy --strict and the import check over the staged tree
    cache_dir: Path = DEFAULT_CACHE_DIR  # the lock, the staging tree, mypy's cache
    schema: Path = json_schema.SCHEMA_PATH
    on_phase: Callable[[Phase], None] | None = None  # told each write phase as it starts


@dataclass(frozen=True, slots=True)
class Rendered:
    """DRY_RUN: the files WRITE would write under `out` (relative posix paths)."""

    files: Mapping[str, str]
    modules: int


@dataclass(frozen=True, slots=True)
class Checked:
    """CHECK: how `out` and the schema file differ from what WRITE would write."""

    files: Mapping[str, str]
    report: CheckReport
    schema_current: bool

    @property
    def up_to_date(self) -> bool:
        return not self.report.changes and self.schema_current


@dataclass(frozen=True, slots=True)
class Written:
    """WRITE: what changed under `out`, and whether the schema file was rewritten."""

    files: Mapping[str, str]
    modules: int
    changes: tuple[Change, ...]
    schema_written: bool
    typechecked: bool
    seconds: float  # verification and writing


@dataclass(frozen=True, slots=True)
class Unverified:
    """A rendered module failed `check`; nothing under `out` changed."""

    check: str
    problems: Sequence[str]


Result = Rendered | Checked | Written | Unverified


class CacheUnusable(Exception):
    """The cache directory cannot hold the lock (the OSError is the cause)."""

    def __init__(self, cache_dir: Path, error: OSError) -> None:
        super().__init__(cache_dir, error)
        self.cache_dir = cache_dir
        self.error = error


def load(path: str | os.PathLike[str]) -> Loaded:
    """Read and validate a matrix file; raises MatrixError listing every problem."""
    data = read_matrix(path)  # once: a FIFO can be read only once
    matrix, enumeration = parse_enumerated(path, data)
    return Loaded(matrix, enumeration, Inputs(display_path(path), data))


def generate(loaded: Loaded, out: Path, mode: Mode, options: Options | None = None) -> Result:
    """Plan and render every combination of `loaded`, then write, check or only return them."""
    options = options or Options()
    plans = [plan_combination(loaded.matrix, c) for c in loaded.enumeration.generated]
    files = render_all(plans, loaded.enumeration.excluded, loaded.inputs)
    match mode:
        case Mode.DRY_RUN:
            return Rendered(files, len(plans))
        case Mode.CHECK:
            return Checked(files, check_tree(out, files), json_schema.is_current(options.schema))
        case Mode.WRITE:
            return _write(out, files, plans, options)


def display_path(path: str | os.PathLike[str]) -> str:
    """The matrix path as headers show it: relative to the repository, never absolute."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return Path(os.path.relpath(resolved, Path.cwd())).as_posix()


def _write(out: Path, files: dict[str, str], plans: list[Plan], options: Options) -> Result:
    started = time.monotonic()
    failed = _static_checks(out.name, files, plans)
    if failed is not None:
        return failed
    lock = contextlib.ExitStack()
    try:
        lock.enter_context(generator_lock(options.cache_dir))
    except OSError as error:
        raise CacheUnusable(options.cache_dir, error) from None
    with lock:
        if options.typecheck:
            failed = _staged_checks(out.name, files, options.cache_dir)
            if failed is not None:
                return failed
        changes = write_tree(out, files, phase=lambda phase: _on_phase(phase, options))
        schema_written = json_schema.write(options.schema)
    seconds = time.monotonic() - started
    return Written(files, len(plans), changes, schema_written, options.typecheck, seconds)


def _static_checks(package: str, files: dict[str, str], plans: list[Plan]) -> Unverified | None:
    """Compile every file, then the LibCST branch-free rule over every runner module."""
    syntax = [e for name, text in files.items() for e in verify.compile_errors(package, name, text)]
    if syntax:
        return Unverified("compile", syntax)
    violations = [
        str(violation)
        for plan in plans
        for violation in verify.check_branch_free(
            f"{package}.{plan.module_name}", files[f"{plan.module_name}.py"]
        )
    ]
    if violations:
        return Unverified("LibCST branch-free check", violations)
    return None


def _staged_checks(package: str, files: dict[str, str], cache_dir: Path) -> Unverified | None:
    """mypy --strict over the tree staged in the cache, then an import of the staged package."""
    staging = cache_dir / "staging" / package
    write_tree(staging, files)
    try:
        errors = verify.run_mypy(
            staging.parent, [package], cache_dir=cache_dir / "mypy", extra_paths=[REPO_ROOT]
        )
    except verify.MypyError as error:
        errors = [f"mypy could not run: {error}"]
    if errors:
        return Unverified("mypy --strict", errors)
    try:
        errors = verify.check_import(staging.parent, package, extra_paths=[REPO_ROOT])
    except verify.ImportCheckError as error:
        errors = [f"the import check could not run: {error}"]
    if errors:
        return Unverified("import of the staged package", errors)
    return None


def _on_phase(phase: Phase, options: Options) -> None:
    if options.on_phase is not None:
        options.on_phase(phase)
    _pause_for_tests(phase)


def _pause_for_tests(phase: Phase) -> None:
    """With PAUSE_ENV set to `phase`, wait (up to a minute) for a signal, after saying so on
    stderr, so a test can interrupt the write exactly here."""
    if os.environ.get(PAUSE_ENV) != phase:
        return
    print(f"paused at {phase}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 60
    while not signal_pending() and time.monotonic() < deadline:
        time.sleep(0.02)

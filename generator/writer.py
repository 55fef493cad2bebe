"""The one writer of generated trees: compare, replace changed files atomically, drop orphans, lock.

A file is managed when the generator produced it this run (it is in `files`) or when its first line
carries GENERATED_MARKER (an orphan of an earlier run). Every other file under the output directory
is foreign and never touched.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import os
import secrets
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Literal

# Split so that the generator's own sources never look generated to tools that scan for it.
GENERATED_MARKER = "@" + "generated"

DIFF_LINE_LIMIT = 100
# A first line longer than this is not a generated header.
_HEADER_BYTES = 4096
_SKIPPED_DIRS = frozenset({"__pycache__"})

ChangeKind = Literal["stale", "missing", "orphaned"]


@dataclass(frozen=True)
class Change:
    """A file under the output directory that differs from what the generator produces."""

    path: str  # posix path relative to the output directory
    kind: ChangeKind


@dataclass(frozen=True)
class CheckReport:
    """What `write_tree` would change, with a unified diff capped at DIFF_LINE_LIMIT lines."""

    changes: tuple[Change, ...]
    diff: str


def check_tree(out_dir: Path, files: Mapping[str, str]) -> CheckReport:
    """Compare `out_dir` with `files` (relative posix path → full text); write nothing."""
    _validate_paths(files)
    changes = _changes(out_dir, files)
    lines: list[str] = []
    for change in changes:
        old = "" if change.kind == "missing" else _read_text(out_dir / change.path)
        new = "" if change.kind == "orphaned" else files[change.path]
        lines.extend(_file_diff(out_dir.name, change, old, new))
    if len(lines) > DIFF_LINE_LIMIT:
        hidden = len(lines) - DIFF_LINE_LIMIT
        lines = [*lines[:DIFF_LINE_LIMIT], f"... {hidden} more lines\n"]
    return CheckReport(changes, "".join(lines))


def write_tree(out_dir: Path, files: Mapping[str, str]) -> tuple[Change, ...]:
    """Make `out_dir` hold exactly `files` plus its foreign files; return what changed.

    Every new content is first written, fsync'd, to a temporary file beside its target; only then,
    with SIGINT and SIGTERM blocked, are the temporaries renamed into place and orphans deleted.
    A failure before the first rename removes the temporaries (and any directory this call made)
    and leaves `out_dir` as it was. Unchanged files are not rewritten.
    """
    _validate_paths(files)
    changes = _changes(out_dir, files)
    if not changes:
        return changes
    created_dirs: list[Path] = []
    staged: list[tuple[Path, Path]] = []  # (temporary, target)
    replaced = 0
    try:
        for change in changes:
            if change.kind == "orphaned":
                continue
            target = out_dir / change.path
            created_dirs.extend(_make_dirs(target.parent))
            staged.append((_write_temporary(target, files[change.path]), target))

        # An interrupt now would leave a half-updated tree; it is delivered once this is done.
        with _signals_deferred():
            for temporary, target in staged:
                os.replace(temporary, target)
                replaced += 1
            for change in changes:
                if change.kind == "orphaned":
                    (out_dir / change.path).unlink(missing_ok=True)
            for directory in sorted({target.parent for _, target in staged} | {out_dir}):
                _fsync_dir(directory)
    except BaseException:
        _remove_temporaries(staged)
        if replaced == 0:
            for directory in reversed(created_dirs):
                with contextlib.suppress(OSError):
                    directory.rmdir()
        raise
    return changes


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them.

    Python runs signal handlers in the main thread whichever thread the OS delivered the signal
    to, so a thread's signal mask is not enough in a process with other threads (torch's pools,
    say): the handlers themselves are swapped for one that records the signal.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be installed from the main thread
        return
    pending: list[int] = []

    def defer(signum: int, _frame: FrameType | None) -> None:
        pending.append(signum)

    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, defer) for signum in watched}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for pending_signum in dict.fromkeys(pending):
            signal.raise_signal(pending_signum)


@contextlib.contextmanager
def generator_lock(
    cache_dir: Path, *, notify: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold an exclusive lock on `cache_dir/lock` (flock) so only one generator run writes at once.

    If another process holds it, `notify` (default: a line on stderr) is told that this run is
    waiting, and the call blocks until the lock is free.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message = f"waiting for another generator run (lock: {path})"
            (notify or _print_stderr)(message)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        # Closing the descriptor releases the lock.
        os.close(fd)


def _print_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _validate_paths(files: Mapping[str, str]) -> None:
    for name in files:
        pure = PurePosixPath(name)
        if (
            not name
            or pure.is_absolute()
            or "\\" in name
            or any(part in ("", ".", "..") for part in name.split("/"))
        ):
            raise ValueError(
                f"generated file path {name!r} must be a relative posix path inside the output "
                "directory (no '..', '.', empty parts, backslashes or leading '/')"
            )


def _changes(out_dir: Path, files: Mapping[str, str]) -> tuple[Change, ...]:
    changes: list[Change] = []
    for name in files:
        target = out_dir / name
        if not target.is_file():
            changes.append(Change(name, "missing"))
        elif target.read_bytes() != files[name].encode("utf-8"):
            changes.append(Change(name, "stale"))
    changes.extend(Change(name, "orphaned") for name in _marked_files(out_dir) if name not in files)
    return tuple(sorted(changes, key=lambda c: c.path))


def _marked_files(out_dir: Path) -> list[str]:
    """Relative paths of regular files under `out_dir` whose first line carries the marker."""
    found: list[str] = []
    if not out_dir.is_dir():
        return found
    for directory, subdirs, names in os.walk(out_dir):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
        for name in names:
            path = Path(directory, name)
            if path.is_symlink() or not path.is_file():
                continue
            if _first_line_has_marker(path):
                found.append(path.relative_to(out_dir).as_posix())
    return found


def _first_line_has_marker(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(_HEADER_BYTES)
    first_line = head.split(b"\n", 1)[0]
    return GENERATED_MARKER.encode("ascii") in first_line


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def _file_diff(root_name: str, change: Change, old: str, new: str) -> list[str]:
    old_name = "/dev/null" if change.kind == "missing" else f"a/{root_name}/{change.path}"
    new_name = "/dev/null" if change.kind == "orphaned" else f"b/{root_name}/{change.path}"
    lines: list[str] = []
    for line in difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), old_name, new_name
    ):
        if line.endswith("\n"):
            lines.append(line)
        else:
            lines.extend([line + "\n", "\\ No newline at end of file\n"])
    # An empty file that is missing or orphaned has no hunks; its header still names it.
    return lines or [f"--- {old_name}\n", f"+++ {new_name}\n"]


def _make_dirs(directory: Path) -> list[Path]:
    """Create `directory` and missing parents; return the ones created, outermost first."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir()
    return list(reversed(missing))


def _write_temporary(target: Path, text: str) -> Path:
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open applies the umask, as a plain open() of the target would; a stale file keeps its mode.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        if target.is_file():
            os.chmod(temporary, stat.S_IMODE(target.stat().st_mode))
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return temporary


def _remove_temporaries(staged: list[tuple[Path, Path]]) -> None:
    for temporary, _ in staged:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""The one writer of generated trees: compare, switch a complete new tree in at once, lock.

Ownership. The writer removes or replaces only what it can prove it wrote. The proof of a
package is its manifest (MANIFEST_NAME: every file of the last run with its sha256, itself
generated); a package written before manifests existed is recognised by its `__init__.py`
carrying this generator's exact header. A file is an orphan, and removed, only when it sits
directly in the output directory, has a module name the matrix could produce, starts with the
exact header line, and is listed in the previous manifest with the hash it still has. Everything
else is foreign: left alone, carried into the new tree, and reported by `check_tree`. A
non-empty directory that is no generated package is refused whole (NotOurs), so pointing `--out`
at a repository root changes nothing there.

Atomicity. The complete new tree (new files, plus hard links of unchanged and foreign entries) is
staged in a sibling directory, then exchanged with the old one by a single renameat2
(RENAME_EXCHANGE) call, with SIGINT and SIGTERM held: a reader sees the old tree or the new one,
never a mix. The old tree, now at the staging name, is then deleted. A run killed before the
exchange leaves the output as it was; killed after it, the output is complete; either way the
next run removes the leftover staging directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import difflib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Literal

from generator.naming import MODULE

# Split so that the generator's own sources never look generated to tools that scan for it.
GENERATED_MARKER = "@" + "generated"
MANIFEST_NAME = "manifest.sha256"

DIFF_LINE_LIMIT = 100
# A first line longer than this is not a generated header.
_HEADER_BYTES = 4096
_HEADER_START = f"# {GENERATED_MARKER} by `python -m generator --matrix "
_HEADER_END = "`; do not edit, regenerate."
_HEADER = re.compile(re.escape(_HEADER_START) + r"[^\n]+" + re.escape(_HEADER_END))
# `{a2a}__{quant}__{dispatch}.py`, the only modules a matrix can produce.
_MODULE = re.compile(rf"{MODULE}\.py")
_MANIFEST_ENTRY = re.compile(r"([0-9a-f]{64})  (\S+)")
_CACHE_DIR = "__pycache__"

ChangeKind = Literal["stale", "missing", "orphaned"]
# Phases a write passes through, named to the `phase` callback of write_tree.
Phase = Literal["staging", "staged", "committed"]


class NotOurs(Exception):
    """The output directory (or a path in it) holds something this generator did not write."""


@dataclass(frozen=True)
class Change:
    """A file under the output directory that differs from what the generator produces."""

    path: str  # posix path relative to the output directory
    kind: ChangeKind


@dataclass(frozen=True)
class CheckReport:
    """What `write_tree` would change, with a unified diff capped at DIFF_LINE_LIMIT lines, and the
    top-level entries the writer would leave alone as not its own."""

    changes: tuple[Change, ...]
    diff: str
    foreign: tuple[str, ...] = ()


def header_line(matrix_path: str) -> str:
    """The first line of every generated file (the path as a comment may show it)."""
    return f"{_HEADER_START}{matrix_path}{_HEADER_END}"


# The manifest's own first line: fixed, so that it never depends on the matrix.
MANIFEST_HEADER = (
    f"# {GENERATED_MARKER} by `python -m generator`; do not edit: every file of this package "
    "it wrote, with its sha256."
)


def manifest_text(files: Mapping[str, str]) -> str:
    """The manifest of a package: `sha256  path` of every file the generator writes, sorted."""
    lines = [
        MANIFEST_HEADER,
        "# The generator removes no file that is not listed here.",
        *(
            f"{hashlib.sha256(text.encode('utf-8')).hexdigest()}  {name}"
            for name, text in sorted(files.items())
        ),
    ]
    return "\n".join(lines) + "\n"


def _with_manifest(files: Mapping[str, str]) -> dict[str, str]:
    _validate_paths(files)
    if MANIFEST_NAME in files:
        raise ValueError(f"{MANIFEST_NAME} is the writer's own file; it cannot be generated")
    return {**files, MANIFEST_NAME: manifest_text(files)}


def check_tree(out_dir: Path, files: Mapping[str, str]) -> CheckReport:
    """Compare `out_dir` with `files` (relative posix path → full text); write nothing.

    Raises NotOurs when `out_dir` is no generated package, OSError when it cannot be read."""
    files = _with_manifest(files)
    survey = _survey(out_dir, files)
    lines: list[str] = []
    diffed = 0
    # Past the cap no more diffs are made: 10,000 missing modules need not all be diffed.
    for change in survey.changes:
        if len(lines) > DIFF_LINE_LIMIT:
            break
        old = "" if change.kind == "missing" else _read_text(out_dir / change.path)
        new = "" if change.kind == "orphaned" else files[change.path]
        lines.extend(_file_diff(out_dir.name, change, old, new))
        diffed += 1
    if len(lines) > DIFF_LINE_LIMIT:
        hidden = len(lines) - DIFF_LINE_LIMIT
        files_left = len(survey.changes) - diffed
        more = f" and {files_left} more files" if files_left else ""
        lines = [*lines[:DIFF_LINE_LIMIT], f"... {hidden} more lines{more}\n"]
    return CheckReport(survey.changes, "".join(lines), survey.foreign)


def write_tree(
    out_dir: Path,
    files: Mapping[str, str],
    *,
    phase: Callable[[Phase], None] | None = None,
) -> tuple[Change, ...]:
    """Make `out_dir` hold exactly `files` plus its foreign entries; return what changed.

    Nothing is written when nothing changed. Otherwise the new tree is staged beside `out_dir`
    and switched in by one exchange (module docstring); `phase` is told when staging started
    (a first file is written), when the staged tree is complete, and when it has been switched
    in. Any failure or interrupt before the switch removes the staging tree and leaves
    `out_dir` as it was. The manifest (MANIFEST_NAME) is written with the files. Raises NotOurs
    and OSError.
    """
    files = _with_manifest(files)
    survey = _survey(out_dir, files)
    remove_leftover(out_dir)
    if not survey.changes:
        return survey.changes
    notify = phase or (lambda _: None)
    staging = staging_path(out_dir)
    created = _make_dirs(out_dir.parent)
    try:
        _stage(out_dir, staging, files, survey, notify)
        notify("staged")
    except BaseException:
        _remove_tree(staging)
        _remove_dirs(created)
        raise
    # An interrupt from here on is delivered once the switch and the clean-up are done.
    with _signals_deferred():
        try:
            if os.path.lexists(out_dir):
                _exchange(staging, out_dir)
            else:
                os.rename(staging, out_dir)
        except BaseException:
            _remove_tree(staging)
            _remove_dirs(created)
            raise
        notify("committed")
        with contextlib.suppress(OSError):
            _fsync_dir(out_dir.parent)
        # The old tree; a failure here leaves it for the next run to remove.
        with contextlib.suppress(OSError):
            _remove_tree(staging)
    return survey.changes


def staging_path(out_dir: Path) -> Path:
    """Where the new tree is built, beside `out_dir` (a rename needs the same file system)."""
    return out_dir.parent / f".{out_dir.name}.generator-new"


def remove_leftover(out_dir: Path) -> bool:
    """Remove the staging directory a killed run left beside `out_dir`; True if there was one."""
    staging = staging_path(out_dir)
    if staging.is_symlink() or (staging.exists() and not staging.is_dir()):
        raise NotOurs(f"{staging} is in the way of the staging directory and is not one")
    if not staging.exists():
        return False
    _remove_tree(staging)
    return True


def signal_pending() -> bool:
    """Whether a signal arrived while signals are held (see _signals_deferred)."""
    return bool(_PENDING)


_PENDING: list[int] = []


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

    def defer(signum: int, _frame: FrameType | None) -> None:
        _PENDING.append(signum)

    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, defer) for signum in watched}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        pending = list(dict.fromkeys(_PENDING))
        _PENDING.clear()
        for pending_signum in pending:
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


@dataclass(frozen=True)
class _Survey:
    changes: tuple[Change, ...]
    unchanged: frozenset[str]
    orphans: frozenset[str]
    foreign: tuple[str, ...]  # top-level entries that are not the generator's, sorted


def _survey(out_dir: Path, files: Mapping[str, str]) -> _Survey:
    """What differs between `out_dir` and `files`, and what in `out_dir` is provably ours."""
    if out_dir.is_symlink():
        raise NotOurs(f"{out_dir} is a symbolic link; pass the directory itself")
    if not out_dir.exists():
        missing = tuple(Change(name, "missing") for name in sorted(files))
        return _Survey(missing, frozenset(), frozenset(), ())
    if not out_dir.is_dir():
        raise NotOurs(f"{out_dir} is not a directory")
    entries = sorted(os.listdir(out_dir))
    manifest = _read_manifest(out_dir / MANIFEST_NAME)
    if entries and manifest is None and not _has_header(out_dir / "__init__.py"):
        raise NotOurs(
            f"{out_dir} is not empty and is no generated package (no {MANIFEST_NAME}, no "
            "generated __init__.py): the generator writes only into a new or empty directory "
            "or one it generated before"
        )
    listed = manifest or {}
    changes: list[Change] = []
    unchanged: set[str] = set()
    for name in files:
        target = out_dir / name
        if not os.path.lexists(target):
            changes.append(Change(name, "missing"))
            continue
        if target.is_symlink() or not target.is_file():
            raise NotOurs(f"{target} is in the way of a generated file and is not one")
        if target.read_bytes() == files[name].encode("utf-8"):
            unchanged.add(name)
            continue
        own_manifest = name == MANIFEST_NAME and manifest is not None
        owned = own_manifest or name in listed or _has_header(target)
        if not owned and target.stat().st_size:
            raise NotOurs(
                f"{target} would be replaced, but this generator did not write it (it has no "
                f"generated header and is not in {MANIFEST_NAME}); move it away"
            )
        changes.append(Change(name, "stale"))
    orphans = {
        name
        for name, digest in listed.items()
        if name not in files and _is_orphan(out_dir / name, name, digest)
    }
    changes.extend(Change(name, "orphaned") for name in orphans)
    tops = {name.split("/", 1)[0] for name in files}
    foreign = tuple(name for name in entries if name not in tops | orphans and name != _CACHE_DIR)
    return _Survey(
        tuple(sorted(changes, key=lambda c: c.path)),
        frozenset(unchanged),
        frozenset(orphans),
        foreign,
    )


def _is_orphan(path: Path, name: str, digest: str) -> bool:
    """Provably a module of an earlier run: directly in the directory, a module name the matrix
    could produce, the exact header, and the bytes the manifest recorded."""
    if not _MODULE.fullmatch(name) or path.is_symlink() or not path.is_file():
        return False
    data = path.read_bytes()
    first_line = data[:_HEADER_BYTES].split(b"\n", 1)[0]
    return (
        _HEADER.fullmatch(first_line.decode("utf-8", errors="replace")) is not None
        and hashlib.sha256(data).hexdigest() == digest
    )


def _has_header(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    with path.open("rb") as handle:
        head = handle.read(_HEADER_BYTES)
    first_line = head.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    return _HEADER.fullmatch(first_line) is not None


def _read_manifest(path: Path) -> dict[str, str] | None:
    """`path → sha256` of a manifest with the exact header; None when there is none."""
    if path.is_symlink() or not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or lines[0] != MANIFEST_HEADER:
        return None
    entries: dict[str, str] = {}
    for line in lines[1:]:
        match = _MANIFEST_ENTRY.fullmatch(line)
        if match is not None:
            entries[match.group(2)] = match.group(1)
    return entries


def _stage(
    out_dir: Path,
    staging: Path,
    files: Mapping[str, str],
    survey: _Survey,
    notify: Callable[[Phase], None],
) -> None:
    """Build the complete new tree at `staging`."""
    staging.mkdir()
    changed = {c.path for c in survey.changes if c.kind != "orphaned"}
    first = True
    for name in sorted(files):
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name in survey.unchanged:
            _link_or_copy(out_dir / name, target)
            continue
        old = out_dir / name
        mode = stat.S_IMODE(old.stat().st_mode) if name in changed and old.is_file() else None
        _write_file(target, files[name], mode)
        if first:
            notify("staging")
            first = False
    if out_dir.is_dir():
        _carry_foreign(out_dir, staging, "", files, survey.orphans)
    for directory in sorted({(staging / name).parent for name in files} | {staging}):
        _fsync_dir(directory)
    if out_dir.is_dir():  # last: the old mode may not allow writing into it
        os.chmod(staging, stat.S_IMODE(out_dir.stat().st_mode))


def _carry_foreign(
    source: Path, target: Path, prefix: str, files: Mapping[str, str], orphans: frozenset[str]
) -> None:
    """Link every entry of `source` that is neither generated nor an orphan into `target`."""
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        rel = prefix + entry.name
        if rel in files or rel in orphans:
            continue
        destination = target / entry.name
        is_dir = entry.is_dir(follow_symlinks=False)
        if is_dir and any(name.startswith(rel + "/") for name in files):
            destination.mkdir(exist_ok=True)
            _carry_foreign(Path(entry.path), destination, rel + "/", files, orphans)
            os.chmod(destination, stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode))
        elif entry.is_symlink():
            os.symlink(os.readlink(entry.path), destination)
        elif is_dir:
            shutil.copytree(entry.path, destination, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, destination)


def _link_or_copy(source: str | Path, destination: str | Path) -> None:
    """A hard link (same file, same mtime, no copy); a copy where links are not allowed."""
    try:
        os.link(source, destination, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EMLINK, errno.EXDEV, errno.EACCES):
            raise
        shutil.copy2(source, destination, follow_symlinks=False)


def _write_file(target: Path, text: str, mode: int | None) -> None:
    # os.open applies the umask, as a plain open() would; a replaced file keeps its mode.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as handle:
        handle.write(text.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
    if mode is not None:
        os.chmod(target, mode)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(new: Path, old: Path) -> None:
    """Swap two directories in one step (renameat2 RENAME_EXCHANGE, Linux 3.15+)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available (Linux with glibc 2.28+)", old)
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    result = renameat2(_AT_FDCWD, os.fsencode(new), _AT_FDCWD, os.fsencode(old), _RENAME_EXCHANGE)
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(old))


def _make_dirs(directory: Path) -> list[Path]:
    """Create `directory` and missing parents; return the ones created, outermost first."""
    missing: list[Path] = []
    while not os.path.lexists(directory):
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir()
    return list(reversed(missing))


def _remove_dirs(created: list[Path]) -> None:
    for directory in reversed(created):
        with contextlib.suppress(OSError):
            directory.rmdir()


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""The writer: change detection, atomic writes, orphans, foreign files, capped diff, the lock."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest

from generator import writer
from generator.writer import (
    GENERATED_MARKER,
    MANIFEST_NAME,
    Change,
    NotOurs,
    check_tree,
    generator_lock,
    header_line,
    manifest_text,
    staging_path,
    write_tree,
)

REPO = Path(__file__).resolve().parents[2]
MARK = "@" + "generated"
OLD_NS = 1_000_000_000_000_000_000  # an mtime no write of this test produces


def _module(body: str) -> str:
    return f"{header_line('schema/amd.yaml')}\n{body}"


def _expected(files: dict[str, str], **foreign: bytes) -> dict[str, bytes]:
    """The tree write_tree leaves: the files, its manifest, and the given foreign files."""
    tree = {p: t.encode("utf-8") for p, t in files.items()}
    tree[MANIFEST_NAME] = manifest_text(files).encode("utf-8")
    return tree | foreign


FILES = {
    "__init__.py": _module("RUNNERS = {}\n"),
    "py.typed": "",
    "none__unquant__standard.py": _module("class Runner:\n    pass\n"),
    "sub/deep.py": _module("X = 1\r\nY = 2\n"),  # CRLF must survive byte for byte
}


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path (temp files included)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_marker_is_split_in_source() -> None:
    assert GENERATED_MARKER == MARK
    source = (REPO / "generator" / "writer.py").read_text(encoding="utf-8")
    assert MARK not in source


def test_write_into_missing_dir_creates_everything(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    changes = write_tree(out, FILES)
    assert changes == tuple(Change(p, "missing") for p in sorted([*FILES, MANIFEST_NAME]))
    assert _tree(out) == _expected(FILES)
    assert not staging_path(out).exists()
    assert (out / "sub" / "deep.py").read_bytes() == (
        header_line("schema/amd.yaml").encode() + b"\nX = 1\r\nY = 2\n"
    )
    mode = (out / "__init__.py").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_second_write_changes_nothing_and_keeps_mtimes(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    write_tree(out, FILES)
    for path in out.rglob("*"):
        os.utime(path, ns=(OLD_NS, OLD_NS))
    assert write_tree(out, FILES) == ()
    assert all(p.stat().st_mtime_ns == OLD_NS for p in out.rglob("*") if p.is_file())

    edited = dict(FILES, **{"__init__.py": _module("RUNNERS = {1: 2}\n")})
    assert write_tree(out, edited) == (
        Change("__init__.py", "stale"),
        Change(MANIFEST_NAME, "stale"),
    )
    assert (out / "__init__.py").read_text(encoding="utf-8") == edited["__init__.py"]
    unchanged = [
        p for p in out.rglob("*") if p.is_file() and p.name not in ("__init__.py", MANIFEST_NAME)
    ]
    assert unchanged and all(p.stat().st_mtime_ns == OLD_NS for p in unchanged)
    assert (out / "__init__.py").stat().st_mtime_ns != OLD_NS


def test_stale_file_keeps_its_mode(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    write_tree(out, FILES)
    (out / "__init__.py").chmod(0o640)
    write_tree(out, dict(FILES, **{"__init__.py": "changed\n"}))
    assert (out / "__init__.py").stat().st_mode & 0o777 == 0o640


def test_check_detects_stale_missing_orphaned_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    write_tree(out, dict(FILES, **{"mori__mxfp4__mori_ll.py": _module("OLD = 1\n")}))
    (out / "__init__.py").write_text(_module("RUNNERS = {}\n").replace("{}", "{ }"))
    (out / "none__unquant__standard.py").unlink()
    before = _snapshot(out)
    report = check_tree(out, FILES)
    assert report.changes == (
        Change("__init__.py", "stale"),
        Change(MANIFEST_NAME, "stale"),
        Change("mori__mxfp4__mori_ll.py", "orphaned"),
        Change("none__unquant__standard.py", "missing"),
    )
    assert report.foreign == ()
    assert _snapshot(out) == before


def test_check_of_up_to_date_tree_is_empty(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    write_tree(out, FILES)
    assert check_tree(out, FILES) == writer.CheckReport((), "", ())


def test_check_of_missing_dir_reports_all_missing(tmp_path: Path) -> None:
    report = check_tree(tmp_path / "generated", FILES)
    assert report.changes == tuple(Change(p, "missing") for p in sorted([*FILES, MANIFEST_NAME]))
    assert not (tmp_path / "generated").exists()
    # The empty py.typed still appears in the diff by name.
    assert "--- /dev/null\n+++ b/generated/py.typed\n" in report.diff


def test_check_diff_of_one_character_edit(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    write_tree(out, {"m.py": "a = 1\nb = 2\nc = 3\n"})
    report = check_tree(out, {"m.py": "a = 1\nb = 3\nc = 3\n"})
    assert report.diff.startswith(
        "--- a/generated/m.py\n"
        "+++ b/generated/m.py\n"
        "@@ -1,3 +1,3 @@\n"
        " a = 1\n"
        "-b = 2\n"
        "+b = 3\n"
        " c = 3\n"
        f"--- a/generated/{MANIFEST_NAME}\n"
    )


def test_check_diff_of_missing_and_orphaned_files(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    old = f"{header_line('m.yaml')}\nx = 1"  # no trailing newline
    write_tree(out, {"a__b__old.py": old})
    report = check_tree(out, {"a__b__new.py": "y = 2\n"})
    assert report.changes == (
        Change("a__b__new.py", "missing"),
        Change("a__b__old.py", "orphaned"),
        Change(MANIFEST_NAME, "stale"),
    )
    assert report.diff.startswith(
        "--- /dev/null\n"
        "+++ b/generated/a__b__new.py\n"
        "@@ -0,0 +1 @@\n"
        "+y = 2\n"
        "--- a/generated/a__b__old.py\n"
        "+++ /dev/null\n"
        "@@ -1,2 +0,0 @@\n"
        f"-{header_line('m.yaml')}\n"
        "-x = 1\n"
        "\\ No newline at end of file\n"
    )


def test_check_diff_is_capped_with_a_note(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    big = "".join(f"line {i}\n" for i in range(300))
    report = check_tree(out, {"big.py": big})
    lines = report.diff.splitlines()
    # The manifest's diff comes after and is past the cap.
    # Uncapped: 2 header lines + 1 hunk header + 300 added lines = 303.
    assert len(lines) == 101
    assert lines[:3] == ["--- /dev/null", "+++ b/generated/big.py", "@@ -0,0 +1,300 @@"]
    assert lines[99] == "+line 96"
    assert lines[100] == "... 203 more lines and 1 more files"


def test_foreign_files_survive_write(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    write_tree(out, dict(FILES, **{"a__b__orphan.py": _module("OLD = 1\n")}))
    foreign = {
        "README.md": "notes\n",
        # Looks like a generated module but is not in the manifest.
        "deepep__unquant__deepep_normal.py": "class Runner:\n    pass\n",
        # The exact header and a module name, but not in the manifest: not provably ours.
        "mori__fp8_block__mori_ll.py": _module("X = 1\n"),
        # The marker, but not on the first line.
        "late.py": f"x = 1\n# {MARK}\n",
        # The marker in a cache directory, which the writer never manages.
        "__pycache__/stale.py": f"# {MARK}\n",
        # Lock files other generators mark: never this generator's.
        "poetry.lock": f"# This file is automatically {MARK} by Poetry.\n",
        "Cargo.lock": f"# {MARK} by Cargo\n",
        "sub/notes.txt": "beside a generated file in a subdirectory\n",
    }
    for name, text in foreign.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    (out / "link").symlink_to("README.md")

    report = check_tree(out, FILES)
    assert report.changes == (
        Change("a__b__orphan.py", "orphaned"),
        Change(MANIFEST_NAME, "stale"),
    )
    assert report.foreign == (
        "Cargo.lock",
        "README.md",
        "deepep__unquant__deepep_normal.py",
        "late.py",
        "link",
        "mori__fp8_block__mori_ll.py",
        "poetry.lock",
    )
    assert write_tree(out, FILES) == report.changes
    assert not (out / "a__b__orphan.py").exists()
    kept = {n: t.encode() for n, t in foreign.items()} | {"link": b"notes\n"}
    assert _tree(out) == _expected(FILES, **kept)
    assert os.readlink(out / "link") == "README.md"


def test_only_files_the_manifest_proves_are_orphans(tmp_path: Path) -> None:
    """Listed in the manifest, directly in --out, a module name, the exact header, unchanged."""
    out = tmp_path / "generated"
    previous = {
        "a__b__kept_edited.py": _module("A = 1\n"),
        "a__b__gone.py": _module("B = 1\n"),
        "a__b__marker_only.py": f"# {MARK} by someone else\n",
        "sub/a__b__nested.py": _module("C = 1\n"),
        "notes.py": _module("D = 1\n"),  # not a name `{a2a}__{quant}__{dispatch}`
    }
    write_tree(out, dict(FILES, **previous))
    (out / "a__b__kept_edited.py").write_text(_module("A = 2  # edited by hand\n"))
    changes = write_tree(out, FILES)
    assert Change("a__b__gone.py", "orphaned") in changes
    assert [c for c in changes if c.kind == "orphaned"] == [Change("a__b__gone.py", "orphaned")]
    assert not (out / "a__b__gone.py").exists()
    for kept in ("a__b__kept_edited.py", "a__b__marker_only.py", "sub/a__b__nested.py", "notes.py"):
        assert (out / kept).is_file(), kept
    # What survived is not in the new manifest: the next run still leaves it alone.
    assert write_tree(out, FILES) == ()
    assert set(check_tree(out, FILES).foreign) >= {"a__b__kept_edited.py", "notes.py"}


def test_a_directory_that_is_no_generated_package_is_refused(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\n")
    (project / "poetry.lock").write_text(f"# {MARK} by Poetry\n")
    (project / "generated").mkdir()
    (project / "generated" / "x__y__z.py").write_text(_module("X = 1\n"))
    before = _snapshot(project)
    with pytest.raises(NotOurs, match="no generated package"):
        write_tree(project, FILES)
    with pytest.raises(NotOurs, match="no generated package"):
        check_tree(project, FILES)
    assert _snapshot(project) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]


def test_a_foreign_file_at_a_generated_path_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    write_tree(out, FILES)
    (out / "none__unquant__standard.py").write_text("# mine, hand-written\n")
    (out / MANIFEST_NAME).unlink()
    before = _snapshot(out)
    with pytest.raises(NotOurs, match="did not write it"):
        write_tree(out, FILES)
    assert _snapshot(out) == before


def test_generator_sources_are_never_orphans(tmp_path: Path) -> None:
    out = tmp_path / "copy"
    write_tree(out, {})
    for name in ("writer.py", "verify.py"):
        (out / name).write_bytes((REPO / "generator" / name).read_bytes())
    assert check_tree(out, {}).changes == ()


def test_leftover_staging_of_a_killed_run_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    write_tree(out, FILES)
    leftover = staging_path(out)
    (leftover / "sub").mkdir(parents=True)
    (leftover / "sub" / "half.py").write_text("x")
    write_tree(out, dict(FILES, **{"__init__.py": "changed\n"}))
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generated"]


@pytest.mark.parametrize("name", ["../escape.py", "/abs.py", "a//b.py", "./x.py", "", "a\\b.py"])
def test_paths_must_stay_inside_out_dir(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="relative posix path"):
        write_tree(tmp_path / "generated", {name: "x\n"})
    assert not (tmp_path / "generated").exists()


def test_the_manifest_name_is_reserved(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="writer's own file"):
        write_tree(tmp_path / "generated", {MANIFEST_NAME: "x\n"})


# -- failures leave the tree as it was --------------------------------------------------------


def _prepared(tmp_path: Path) -> tuple[Path, dict[str, str], dict[str, str]]:
    """An existing tree, a new file set that stales, adds, and orphans, and the tree's hashes."""
    out = tmp_path / "generated"
    write_tree(out, dict(FILES, **{"a__b__orphan.py": _module("OLD = 1\n")}))
    (out / "notes.txt").write_text("foreign\n")
    new = dict(FILES, **{"__init__.py": "changed\n", "new/added.py": _module("A = 1\n")})
    return out, new, _snapshot(out)


def _failing_after(
    n: int, real: Callable[..., object], exc: BaseException
) -> Callable[..., object]:
    """`real` for the first n calls, then raise `exc`."""
    calls = 0

    def fake(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls > n:
            raise exc
        return real(*args, **kwargs)

    return fake


def _only_out(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failing_temp_write_leaves_tree_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    out, new, before = _prepared(tmp_path)
    # The first new file is written, the second fails at its fsync.
    monkeypatch.setattr(os, "fsync", _failing_after(1, os.fsync, exc))
    with pytest.raises(type(exc)):
        write_tree(out, new)
    assert _snapshot(out) == before
    assert _only_out(tmp_path) == ["generated"]  # no staging tree left


def test_failing_switch_leaves_tree_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, new, before = _prepared(tmp_path)
    monkeypatch.setattr(writer, "_exchange", _failing_after(0, writer._exchange, OSError(5, "EIO")))
    with pytest.raises(OSError, match="EIO"):
        write_tree(out, new)
    assert _snapshot(out) == before
    assert _only_out(tmp_path) == ["generated"]


def test_failure_in_fresh_out_dir_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "a" / "b" / "generated"
    monkeypatch.setattr(os, "fsync", _failing_after(2, os.fsync, OSError(28, "ENOSPC")))
    with pytest.raises(OSError):
        write_tree(out, FILES)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_switch_is_held_until_the_tree_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    out, new, _ = _prepared(tmp_path)
    seen_at_delivery: list[dict[str, bytes]] = []

    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: FrameType | None) -> None:
        seen_at_delivery.append(_tree(out))
        raise Interrupted

    real_exchange = writer._exchange

    def exchange_then_signal(new_tree: Path, old_tree: Path) -> None:
        os.kill(os.getpid(), signum)
        real_exchange(new_tree, old_tree)

    previous = signal.signal(signum, handler)
    try:
        monkeypatch.setattr(writer, "_exchange", exchange_then_signal)
        with pytest.raises(Interrupted):
            write_tree(out, new)
    finally:
        signal.signal(signum, previous)
    expected = _expected(new, **{"notes.txt": b"foreign\n"})
    assert seen_at_delivery == [expected]
    assert _tree(out) == expected
    assert _only_out(tmp_path) == ["generated"]


def test_exchange_swaps_two_directories_in_one_call(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "y").write_text("b")
    writer._exchange(tmp_path / "a", tmp_path / "b")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["y"]
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["x"]


# -- the lock ---------------------------------------------------------------------------------

HOLDER = """
import sys
from pathlib import Path
from generator.writer import generator_lock
with generator_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "cache")],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_lock_excludes_a_second_process(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    messages: list[str] = []
    acquired = threading.Event()
    release = threading.Event()

    def contender() -> None:
        with generator_lock(tmp_path / "cache", notify=messages.append):
            acquired.set()
            release.wait(10)

    thread = threading.Thread(target=contender, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not messages and time.monotonic() < deadline:
        time.sleep(0.01)
    assert messages == [f"waiting for another generator run (lock: {tmp_path / 'cache' / 'lock'})"]
    assert not acquired.wait(0.3)

    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.wait(timeout=10) == 0
    assert acquired.wait(5)
    release.set()
    thread.join(5)
    assert not thread.is_alive()


def test_uncontended_lock_is_silent_and_released(tmp_path: Path) -> None:
    messages: list[str] = []
    with generator_lock(tmp_path / "cache", notify=messages.append):
        pass
    with generator_lock(tmp_path / "cache", notify=messages.append):
        pass
    assert messages == []
    assert (tmp_path / "cache" / "lock").is_file()


def test_lock_default_notice_goes_to_stderr(
    tmp_path: Path, holder: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    def release_soon() -> None:
        time.sleep(0.5)
        assert holder.stdin is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()

    threading.Thread(target=release_soon, daemon=True).start()
    with generator_lock(tmp_path / "cache"):
        pass
    lock = tmp_path / "cache" / "lock"
    assert capsys.readouterr().err == f"waiting for another generator run (lock: {lock})\n"

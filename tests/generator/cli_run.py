"""Driving the command line in-process, and the digest that shows whether a run touched a tree:
shared by the CLI tests and issue 15's reliability tests."""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path

import pytest

from generator import cli


def run(*args: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`python -m generator ARGS` in this process: (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def generate(matrix: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Writes `matrix`'s package to `out` (without the mypy pass); any failure fails the test."""
    code, _, err = run("--matrix", matrix, "--out", out, "--no-typecheck", capsys=capsys)
    assert code == 0, err


def tree_digest(root: Path, *, ignore: Collection[str] = ()) -> dict[str, str]:
    """sha256 of every file under root (hidden ones included), by relative path; a file with a
    path part named in `ignore` is left out."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part in ignore for part in p.parts)
    }

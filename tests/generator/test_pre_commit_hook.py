"""`.pre-commit-hooks.yaml`: the hook a repository that vendors the runners runs; its entry and
args, run as pre-commit runs them (from the repository root, no file names), pass on a clean
vendored copy and fail once the copy's generated code or schema drifted."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
VENDORED = ("generator", "templates", "schema", "generated")


def _hook() -> dict[str, Any]:
    hooks = yaml.safe_load((REPO_ROOT / ".pre-commit-hooks.yaml").read_text())
    assert isinstance(hooks, list) and len(hooks) == 1
    hook: dict[str, Any] = hooks[0]
    return hook


def test_the_hook_is_declared_as_pre_commit_expects() -> None:
    hook = _hook()
    assert hook["id"] == "aiter-moe-runners-check"
    assert hook["language"] == "python"
    assert hook["pass_filenames"] is False
    assert shlex.split(hook["entry"]) == ["python", "-m", "generator", "--check"]
    assert hook["args"] == ["--matrix", "schema/amd.yaml"]


@pytest.fixture
def vendored(tmp_path: Path) -> Path:
    """A repository that vendors the runners: the four directories at its root."""
    for name in VENDORED:
        shutil.copytree(REPO_ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    return tmp_path


def _run_hook(root: Path) -> subprocess.CompletedProcess[str]:
    hook = _hook()
    command = shlex.split(hook["entry"]) + hook["args"]
    assert command[0] == "python"
    return subprocess.run(
        [sys.executable, *command[1:]], cwd=root, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "GENERATOR_CACHE_DIR": str(root / ".generator-cache")},
    )  # fmt: skip


def test_the_hook_passes_on_a_clean_copy_and_fails_on_drift(vendored: Path) -> None:
    clean = _run_hook(vendored)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    # Negative controls: a hand-edited runner, then (restored) an edited schema, each exit 1.
    module = vendored / "generated" / "none__unquant__standard.py"
    original = module.read_text()
    module.write_text(original + "# edited by hand\n")
    drifted = _run_hook(vendored)
    assert drifted.returncode == 1 and "none__unquant__standard.py" in drifted.stdout
    module.write_text(original)
    schema = vendored / "schema" / "matrix.schema.json"
    schema.write_text(schema.read_text().replace('"description"', '"Description"', 1))
    assert _run_hook(vendored).returncode == 1

"""Every document a tracked file cites is in the repository: a clone has all of them.

Files may cite pages under `docs/` (which must exist) and link to other files by relative Markdown
links (which must resolve). They must not cite the former spec folder, nor anything outside the
checkout (a relative path climbing out of it, or the developers' shared folder by its absolute
path), which a clone does not have.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
THIS_FILE = Path(__file__).resolve()

# Citations of places outside the repository. `\b` keeps words such as "inspect/" out.
_OUTSIDE = (
    (re.compile(r"\bspec/"), "the spec folder is not in the repository; cite docs/ instead"),
    (re.compile(r"/work/shared\b"), "/work/shared is outside the checkout"),
)
# A relative path that starts by climbing (`../`); whether it leaves the checkout depends on
# where the citing file is.
_CLIMBING = re.compile(r"(?<![\w./-])(?:\.\./)+[\w.-][\w./-]*")
# `docs/<name>.md` anywhere (prose, comments, docstrings, generated code).
_DOCS_PAGE = re.compile(r"(?<![\w./-])docs/([\w./-]+?\.md)\b")
# A relative Markdown link target: [text](target), no scheme, not a pure anchor.
_MARKDOWN_LINK = re.compile(r"\]\(([^()\s]+)\)")
# Directories that are never project files, for a tree that is not a git checkout (hidden ones,
# such as .git, .venv or copies of other trees, are skipped too).
_NOT_PROJECT = {"venv", "build", "dist", "__pycache__"}


def _tracked_files() -> list[Path]:
    """The files git tracks; without git (a copied tree), every file outside hidden and build
    folders."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return sorted(
            path
            for path in ROOT.rglob("*")
            if path.is_file()
            and not any(
                part.startswith(".") or part in _NOT_PROJECT or part.endswith(".egg-info")
                for part in path.relative_to(ROOT).parent.parts
            )
        )
    return sorted(ROOT / name for name in listing.decode().split("\0") if name)


def _text(path: Path) -> str | None:
    """The file's text, or None for binary data (tensors, archives)."""
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError):
        return None


def reference_problems(text: str, source: Path, root: Path) -> list[str]:
    """`line: message` for every citation in `text` (the contents of `source`) that a clone at
    `root` cannot follow."""
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        for pattern, why in _OUTSIDE:
            for match in pattern.finditer(line):
                problems.append(f"{number}: {match.group(0)!r}: {why}")
        for match in _CLIMBING.finditer(line):
            if not (source.parent / match.group(0)).resolve().is_relative_to(root.resolve()):
                problems.append(f"{number}: {match.group(0)!r} is outside the checkout")
        for match in _DOCS_PAGE.finditer(line):
            if not (root / "docs" / match.group(1)).is_file():
                problems.append(f"{number}: docs/{match.group(1)} does not exist")
        if source.suffix == ".md":
            for match in _MARKDOWN_LINK.finditer(line):
                target = match.group(1).split("#", 1)[0]
                if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    continue
                if not (source.parent / target).exists():
                    problems.append(f"{number}: link {match.group(1)!r} does not resolve")
    return problems


def test_the_three_pages_and_their_index_exist() -> None:
    for name in ("README.md", "formats.md", "aiter_fused_moe.md", "quant_methods.md"):
        page = ROOT / "docs" / name
        assert page.is_file(), f"{page} is missing"
        assert page.read_text(encoding="utf-8").strip(), f"{page} is empty"


def test_every_tracked_file_cites_only_documents_in_the_repository() -> None:
    files = _tracked_files()
    assert any(path.suffix == ".md" for path in files), f"no Markdown file found under {ROOT}"
    problems = []
    for path in files:
        text = _text(path) if path.resolve() != THIS_FILE else None
        if text is None:
            continue
        problems += [f"{path.relative_to(ROOT)}:{p}" for p in reference_problems(text, path, ROOT)]
    assert not problems, "citations a clone cannot follow:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("see spec/formats.md", "the spec folder"),
        ("# Facts: ../../elsewhere/formats.md", "'../../elsewhere/formats.md' is outside"),
        ("read /work/shared/DESIGN.md", "/work/shared"),
        ("the contract of docs/no_such_page.md", "docs/no_such_page.md does not exist"),
        ("[broken](no_such_file.md)", "does not resolve"),
    ],
)
def test_a_citation_outside_the_repository_is_reported(line: str, expected: str) -> None:
    # The negative control of the scan above: each of these lines must be caught.
    problems = reference_problems(line, ROOT / "docs" / "README.md", ROOT)
    assert any(expected in problem for problem in problems), problems


def test_citations_a_clone_can_follow_pass() -> None:
    text = "\n".join(
        [
            "the contract of docs/aiter_fused_moe.md; inspect/ and respect/ are words",
            "[formats](formats.md#the-wire-x-weight-table) [site](https://example.org/a.md)",
            "[top](#tensors) mydocs/x.md is not a docs page",
            "../README.md is the project's, seen from docs/",
        ]
    )
    assert reference_problems(text, ROOT / "docs" / "README.md", ROOT) == []

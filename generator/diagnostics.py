"""Diagnostics for a matrix file: `path:line:col: error: message`, all problems at once."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem in a matrix file, at a 1-based line and column."""

    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: error: {self.message}"


class MatrixError(Exception):
    """An invalid matrix; carries every diagnostic found, sorted by position."""

    diagnostics: tuple[Diagnostic, ...]

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        # Aliased YAML nodes can be checked twice at the same place: keep one copy of each.
        unique = dict.fromkeys(diagnostics)
        self.diagnostics = tuple(sorted(unique, key=lambda d: (d.line, d.column, d.message)))
        super().__init__("\n".join(str(d) for d in self.diagnostics))


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice most similar to `name` (difflib's close match), or None when none is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None

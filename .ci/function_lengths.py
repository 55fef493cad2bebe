"""CI: no function or method in the given packages spans more than LIMIT lines (issue 9: a long
function is where decisions hide). Prints each offender as path:line name (lines); exit 1 if any."""

from __future__ import annotations

import ast
import pathlib
import sys

LIMIT = 60


def long_functions(root: pathlib.Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                span = (node.end_lineno or node.lineno) - node.lineno + 1
                if span > LIMIT:
                    found.append(f"{path}:{node.lineno} {node.name} ({span} lines)")
    return found


if __name__ == "__main__":
    offenders = [line for root in sys.argv[1:] for line in long_functions(pathlib.Path(root))]
    for line in offenders:
        print(f"function over {LIMIT} lines: {line}")
    sys.exit(1 if offenders else 0)

"""The branch-free check (LibCST) and the mypy subprocess of generator/verify.py."""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from generator.verify import MypyError, Violation, check_branch_free, run_mypy

MODULE = "generated.deepep__unquant__deepep_normal"
RULE = "(hot path must be branch-free)"
GUARD_HINT = (
    "(hot path must be branch-free; the one allowed `if` is a zero-row guard "
    "`if <rows> == 0: return <combine input>` without else)"
)

VALID = '''\
"""A runner that obeys the rule."""
import os

from moe_runtime.types import StandardCombineInput


def _scale(x: int, factor: int) -> int:
    return x * factor


def _unused(x: int) -> int:
    # Never reached from __call__: branches are fine here.
    if x > 0:
        return [i for i in range(x)][0]
    return int(os.environ.get("X", "0")) if x else 0


class Runner:
    def __init__(self, factor: int, on_input: bool) -> None:
        # Load time: every decision belongs here.
        if isinstance(factor, int) and factor > 0:
            self._factor = factor
        else:
            self._factor = 1
        self._prepare = self._on_input if on_input else self._on_output
        for _ in range(2):
            pass

    def _on_input(self, x: int) -> int:
        return _scale(x, self._factor)

    def _on_output(self, x: int) -> int:
        return x + self._factor

    def __call__(self, x: int) -> StandardCombineInput:
        if x == 0:
            return StandardCombineInput(x)
        with open(os.devnull) as sink:
            del sink
        y = self._prepare(x)
        return StandardCombineInput(y)
'''


def _check(source: str) -> list[Violation]:
    return check_branch_free(MODULE, textwrap.dedent(source))


def _found(source: str) -> list[tuple[int, int, str]]:
    return [(v.line, v.column, v.message) for v in _check(source)]


def _found_in_call(body: str) -> list[tuple[int, int, str]]:
    """What the check finds in a module whose one function is `Runner.__call__(self, x)` with
    `body` (dedented), the body's first line being the module's third."""
    header = "class Runner:\n    def __call__(self, x):\n"
    return _found(header + textwrap.indent(textwrap.dedent(body), " " * 8))


def test_valid_runner_passes() -> None:
    assert check_branch_free(MODULE, VALID) == []


def test_violation_str_is_module_line_col() -> None:
    v = Violation(MODULE, 12, 5, "for loop in Runner.__call__ (hot path must be branch-free)")
    assert str(v) == (
        "generated.deepep__unquant__deepep_normal:12:5: error: "
        "for loop in Runner.__call__ (hot path must be branch-free)"
    )


# -- one test per forbidden construct, in each place the hot path reaches --------------------


@dataclass(frozen=True)
class Construct:
    lines: tuple[str, ...]  # the statements, unindented
    # (line within `lines`, 0-based column within that line, what the message names)
    expected: tuple[tuple[int, int, str], ...]


def _named(kind: str, lines: dict[str, str]) -> dict[str, Construct]:
    """One-line constructs reported as "<kind> `<name>`", at the column where the name starts (the
    call or the read itself)."""
    return {
        name: Construct((line,), ((0, line.index(name), f"{kind} `{name}`"),))
        for name, line in lines.items()
    }


CONSTRUCTS: dict[str, Construct] = {
    "if": Construct(("if x:", "    x = 1"), ((0, 0, "if statement"),)),
    "elif": Construct(
        ("if x:", "    x = 1", "elif y:", "    x = 2"),
        ((0, 0, "if statement"), (2, 0, "elif branch")),
    ),
    "else": Construct(
        ("if x:", "    x = 1", "else:", "    x = 2"),
        ((0, 0, "if statement"), (2, 0, "else branch")),
    ),
    "ternary": Construct(("x = 1 if x else 2",), ((0, 4, "conditional expression"),)),
    "match": Construct(("match x:", "    case 1:", "        x = 2"), ((0, 0, "match statement"),)),
    "and": Construct(("x = x and y",), ((0, 4, "boolean `and`"),)),
    "or": Construct(("x = x or y",), ((0, 4, "boolean `or`"),)),
    "for": Construct(("for i in range(3):", "    x = i"), ((0, 0, "for loop"),)),
    "while": Construct(("while x:", "    x = 0"), ((0, 0, "while loop"),)),
    "list comprehension": Construct(("x = [i for i in y]",), ((0, 4, "list comprehension"),)),
    "set comprehension": Construct(("x = {i for i in y}",), ((0, 4, "set comprehension"),)),
    "dict comprehension": Construct(("x = {i: i for i in y}",), ((0, 4, "dict comprehension"),)),
    # LibCST positions exclude enclosing parentheses: the report points at the element.
    "generator expression": Construct(("x = (i for i in y)",), ((0, 5, "generator expression"),)),
    "try": Construct(
        ("try:", "    x = 1", "except ValueError:", "    x = 2"), ((0, 0, "try statement"),)
    ),
    "import": Construct(("import json",), ((0, 0, "import statement"),)),
    "from-import": Construct(("from json import dumps",), ((0, 0, "from-import statement"),)),
    **_named(
        "environment read",
        {
            "os.environ": "x = os.environ['A']",
            "environ": "x = environ['A']",
            "os.getenv": "x = os.getenv('A')",
            "getenv": "x = getenv('A')",
        },
    ),
    **_named(
        "call of",
        {
            "isinstance": "x = isinstance(x, int)",
            "issubclass": "x = issubclass(int, y)",
            "hasattr": "x = hasattr(x, 'a')",
            "getattr": "x = getattr(x, 'real')",
            "setattr": "setattr(y, 'a', x)",
            "__import__": "x = __import__('json')",
            "importlib.import_module": "x = importlib.import_module('json')",
            "eval": "x = eval('1')",
            "exec": "exec('x = 1')",
        },
    ),
}

# Where the snippet goes, and the name the message gives that function.
PLACES = {
    "call": "Runner.__call__",
    "method": "Runner._helper",
    "function": "helper",
    "bound": "Runner._bound",
}


def _runner_with(place: str, snippet: tuple[str, ...]) -> tuple[str, int, int]:
    """A module with `snippet` in the function `place`; returns (source, first line, indent)."""
    lines = [
        "import importlib",
        "import os",
        "from os import environ, getenv",
        "",
        "",
        "def helper(x, y):",
    ]
    start_indent: dict[str, tuple[int, int]] = {}

    def body(name: str, indent: int) -> None:
        if place == name:
            start_indent[name] = (len(lines) + 1, indent)
            lines.extend(" " * indent + s for s in snippet)
        lines.append(" " * indent + "return x")

    body("function", 4)
    lines += [
        "",
        "",
        "class Runner:",
        "    def __init__(self):",
        "        self._prepare = self._bound",
        "",
        "    def _helper(self, x, y):",
    ]
    body("method", 8)
    lines += ["", "    def _bound(self, x, y):"]
    body("bound", 8)
    lines += ["", "    def __call__(self, x, y):"]
    body("call", 8)
    # Replace the trailing `return x` of __call__ with calls into every other place.
    lines.pop()
    lines += [
        "        x = self._helper(x, y)",
        "        x = helper(x, y)",
        "        x = self._prepare(x, y)",
        "        return x",
    ]
    first, indent = start_indent[place]
    return "\n".join(lines) + "\n", first, indent


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("construct", list(CONSTRUCTS))
def test_forbidden_construct_is_reported(construct: str, place: str) -> None:
    spec = CONSTRUCTS[construct]
    source, first, indent = _runner_with(place, spec.lines)
    where = PLACES[place]
    expected = []
    for line, col, what in spec.expected:
        top_level_if_in_call = place == "call" and what == "if statement"
        rule = GUARD_HINT if top_level_if_in_call else RULE
        expected.append((first + line, indent + col + 1, f"{what} in {where} {rule}"))
    assert [(v.line, v.column, v.message) for v in check_branch_free(MODULE, source)] == expected


@pytest.mark.parametrize("place", list(PLACES))
def test_places_are_clean_without_the_construct(place: str) -> None:
    # Negative control for the parametrized test: the scaffold alone has no violation.
    source, _, _ = _runner_with(place, ("x = x + 1",))
    assert check_branch_free(MODULE, source) == []


# -- the zero-row guard ----------------------------------------------------------------------


def test_zero_row_guard_allowed_once_in_either_form() -> None:
    assert _found_in_call(
        """\
        if x.shape[0] == 0: return x
        return x + 1
        """
    ) == []
    assert _found_in_call(
        """\
        y = x + 1
        if y.numel() == 0:
            return y
        return y
        """
    ) == []


def test_second_zero_row_guard_is_rejected() -> None:
    assert _found_in_call(
        """\
        if x == 0:
            return x
        y = x + 1
        if y == 0:
            return y
        return y
        """
    ) == [
        (
            6,
            9,
            "second zero-row guard in Runner.__call__ (hot path must be branch-free; only one "
            "`if <rows> == 0: return <combine input>` without else is allowed)",
        )
    ]


def test_zero_row_guard_with_else_is_rejected() -> None:
    assert _found_in_call(
        """\
        if x == 0:
            return x
        else:
            return x + 1
        """
    ) == [
        (3, 9, f"if statement in Runner.__call__ {GUARD_HINT}"),
        (5, 9, f"else branch in Runner.__call__ {RULE}"),
    ]


def test_zero_row_guard_with_elif_is_rejected() -> None:
    assert _found_in_call(
        """\
        if x == 0:
            return x
        elif x == 1:
            return x
        return x
        """
    ) == [
        (3, 9, f"if statement in Runner.__call__ {GUARD_HINT}"),
        (5, 9, f"elif branch in Runner.__call__ {RULE}"),
    ]


@pytest.mark.parametrize("test", ["x != 0", "x == 1", "x < 1", "not x", "0 == x", "x == 0 == y"])
def test_guard_must_compare_equal_to_zero(test: str) -> None:
    assert _found_in_call(
        f"""\
        if {test}:
            return x
        return x
        """
    ) == [(3, 9, f"if statement in Runner.__call__ {GUARD_HINT}")]


def test_guard_body_must_be_one_return() -> None:
    assert _found_in_call(
        """\
        if x == 0:
            x = x + 1
            return x
        return x
        """
    ) == [(3, 9, f"if statement in Runner.__call__ {GUARD_HINT}")]


def test_guard_only_at_top_level_of_call() -> None:
    # Nested in a `with`, or in a helper, the same text is an ordinary branch.
    assert _found(
        """\
        class Runner:
            def _helper(self, x):
                if x == 0:
                    return x
                return x

            def __call__(self, x):
                with x:
                    if x == 0:
                        return x
                return self._helper(x)
        """
    ) == [
        (3, 9, f"if statement in Runner._helper {RULE}"),
        (9, 13, f"if statement in Runner.__call__ {RULE}"),
    ]


def test_guard_condition_is_still_checked() -> None:
    assert _found_in_call(
        """\
        if getattr(x, "rows") == 0:
            return x
        return x
        """
    ) == [(3, 12, f"call of `getattr` in Runner.__call__ {RULE}")]


# -- reachability ----------------------------------------------------------------------------


def test_branches_in_init_and_uncalled_functions_are_allowed() -> None:
    assert _found(
        """\
        def unused(x):
            return [i for i in x if i]

        class Runner:
            def __init__(self, x):
                if x:
                    self.x = x or 1

            def unused_method(self, x):
                while x:
                    x -= 1

            def __call__(self, x):
                return x
        """
    ) == []


def test_reachability_is_transitive() -> None:
    assert _found(
        """\
        def leaf(x):
            return x if x else 0

        def middle(x):
            return leaf(x)

        class Runner:
            def _step(self, x):
                return middle(x)

            def __call__(self, x):
                return self._step(x)
        """
    ) == [(2, 12, f"conditional expression in leaf {RULE}")]


def test_recursion_does_not_loop_and_reports_once() -> None:
    assert _found(
        """\
        def ping(x):
            return pong(x) or x

        def pong(x):
            return ping(x)

        class Runner:
            def __call__(self, x):
                return ping(x) + pong(x)
        """
    ) == [(2, 12, f"boolean `or` in ping {RULE}")]


def test_method_passed_as_callback_is_hot() -> None:
    assert _found(
        """\
        class Runner:
            def _cb(self, x):
                return x and 1

            def __call__(self, x):
                return apply(self._cb, x)
        """
    ) == [(3, 16, f"boolean `and` in Runner._cb {RULE}")]


def test_every_load_time_candidate_is_hot() -> None:
    assert _found(
        """\
        def on_output(x):
            return x or 0

        class Runner:
            def __init__(self, flag, other):
                if flag:
                    self._prep = self._on_input
                else:
                    self._prep = on_output
                self._post = other if flag else (lambda x: x and x)
                self._unused = self._cold

            def _on_input(self, x):
                return [x for _ in x]

            def _cold(self, x):
                return x or 1

            def __call__(self, x):
                return self._post(self._prep(x))
        """
    ) == [
        (2, 12, f"boolean `or` in on_output {RULE}"),
        (10, 52, f"boolean `and` in lambda bound to self._post in Runner.__init__ {RULE}"),
        (14, 16, f"list comprehension in Runner._on_input {RULE}"),
    ]


def test_callee_of_load_time_assignment_is_not_bound() -> None:
    # `make` runs once in __init__; its result, not `make`, is what the hot path calls.
    assert _found(
        """\
        class Runner:
            def __init__(self):
                self._fn = self._make(3)

            def _make(self, n):
                return [n for _ in range(n)]

            def __call__(self, x):
                return self._fn(x)
        """
    ) == []


def test_names_that_only_look_forbidden_are_allowed() -> None:
    assert _found_in_call(
        """\
        y = kernel(x, environ=1, isinstance=2)
        z = x.environ + x.getattr(1) + config.getenv
        f = lambda getenv: 1
        def environ(environ):
            return 1
        return y + z + f(0)
        """
    ) == []


def test_attribute_named_like_a_function_is_not_a_binding() -> None:
    # `other.helper` is some object's attribute, not the module-level `helper`.
    assert _found(
        """        def helper(x):
            return x or 1

        class Runner:
            def __init__(self, other):
                self._fn = other.helper

            def __call__(self, x):
                return self._fn(x) + other.helper(x)
        """
    ) == []


def test_lambda_and_nested_def_bodies_in_hot_path_are_checked() -> None:
    assert _found_in_call(
        """\
        f = lambda v: v or 1
        def g(v):
            for _ in v:
                pass
        return f(g(x))
        """
    ) == [
        (3, 23, f"boolean `or` in Runner.__call__ {RULE}"),
        (5, 13, f"for loop in Runner.__call__ {RULE}"),
    ]


def test_async_for_and_async_comprehension_are_reported() -> None:
    assert _found(
        """\
        class Runner:
            async def __call__(self, x):
                async for v in x:
                    pass
                return [v async for v in x]
        """
    ) == [
        (3, 9, f"async for loop in Runner.__call__ {RULE}"),
        (5, 16, f"list comprehension in Runner.__call__ {RULE}"),
    ]


# -- module shape ----------------------------------------------------------------------------


def test_module_without_runner_is_a_violation() -> None:
    assert _found("class NotRunner:\n    def __call__(self):\n        return 1\n") == [
        (1, 1, "module defines no `class Runner` at top level")
    ]


def test_runner_without_call_is_a_violation() -> None:
    assert _found("import os\n\n\nclass Runner:\n    pass\n") == [
        (4, 1, "class Runner defines no `__call__` (the hot path)")
    ]


def test_unparsable_module_is_a_violation() -> None:
    found = _check("class Runner:\n    def __call__(self:\n        return 1\n")
    assert len(found) == 1
    assert found[0].module == MODULE
    assert found[0].line == 3
    assert found[0].message.startswith("syntax error: ")


# -- mypy ------------------------------------------------------------------------------------


def _package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def test_mypy_clean_package_passes(tmp_path: Path) -> None:
    _package(tmp_path, {"pkg/__init__.py": "def f(x: int) -> int:\n    return x\n"})
    assert run_mypy(tmp_path, ["pkg"], cache_dir=tmp_path / "cache") == []


def test_mypy_type_error_reported_with_line(tmp_path: Path) -> None:
    _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/mod.py": "def f(x: int) -> str:\n    return x\n",
        },
    )
    errors = run_mypy(tmp_path, ["pkg"], cache_dir=tmp_path / "cache")
    assert len(errors) == 1
    assert errors[0].startswith("pkg/mod.py:2:12: error: Incompatible return value type")
    assert errors[0].endswith("[return-value]")


def test_mypy_strict_applies(tmp_path: Path) -> None:
    # Untyped defs are fine for plain mypy; --strict must reject them.
    _package(tmp_path, {"pkg/__init__.py": "def f(x):\n    return x\n"})
    errors = run_mypy(tmp_path, ["pkg"], cache_dir=tmp_path / "cache")
    assert errors == [
        "pkg/__init__.py:1:1: error: Function is missing a type annotation  [no-untyped-def]"
    ]


def test_mypy_uses_the_repo_config_by_default(tmp_path: Path) -> None:
    # warn_unreachable is not part of --strict; it comes from pyproject.toml.
    unreachable = """\
        def f(x: int) -> int:
            if isinstance(x, int):
                return x
            return 0
        """
    _package(tmp_path, {"pkg/__init__.py": unreachable})
    errors = run_mypy(tmp_path, ["pkg"], cache_dir=tmp_path / "cache")
    assert errors == ["pkg/__init__.py:4:5: error: Statement is unreachable  [unreachable]"]
    # Negative control: a config without the option does not report it.
    config = tmp_path / "plain.toml"
    config.write_text("[tool.mypy]\n", encoding="utf-8")
    plain = run_mypy(tmp_path, ["pkg"], cache_dir=tmp_path / "cache2", config_file=config)
    assert plain == []


def test_mypy_extra_paths_resolve_imports(tmp_path: Path) -> None:
    _package(
        tmp_path,
        {
            "lib/helperlib/__init__.py": "def twice(x: int) -> int:\n    return 2 * x\n",
            "src/pkg/__init__.py": "from helperlib import twice\n\nY: int = twice(2)\n",
        },
    )
    root = tmp_path / "src"
    found = run_mypy(root, ["pkg"], cache_dir=tmp_path / "c1", extra_paths=[tmp_path / "lib"])
    assert found == []
    missing = run_mypy(root, ["pkg"], cache_dir=tmp_path / "c2")
    assert len(missing) == 1
    assert missing[0].startswith("pkg/__init__.py:1:1: error: Cannot find implementation")


def test_mypy_staged_package_shadows_the_one_on_extra_paths(tmp_path: Path) -> None:
    # The CLI checks a staged `generated/` with the repo root (which has its own) on MYPYPATH.
    _package(
        tmp_path,
        {
            "repo/generated/__init__.py": "OLD: int = 1\n",
            "stage/generated/__init__.py": "from generated.mod import Y\n\nZ: int = Y\n",
            "stage/generated/mod.py": "Y: str = 'a'\n",
        },
    )
    errors = run_mypy(
        tmp_path / "stage", ["generated"], cache_dir=tmp_path / "c", extra_paths=[tmp_path / "repo"]
    )
    assert len(errors) == 1
    assert errors[0].startswith("generated/__init__.py:3:10: error: Incompatible types")


def test_mypy_cache_is_created_and_reused(tmp_path: Path) -> None:
    _package(tmp_path, {"pkg/__init__.py": "def f(x: int) -> int:\n    return x\n"})
    cache = tmp_path / "deep" / "cache"
    assert run_mypy(tmp_path, ["pkg"], cache_dir=cache) == []
    first = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert first, "mypy wrote no cache"
    for path in first:  # make any rewrite visible regardless of timestamp resolution
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert run_mypy(tmp_path, ["pkg"], cache_dir=cache) == []
    second = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert set(second) == set(first)
    untouched = [p for p, t in second.items() if t == 1_000_000_000]
    # A cold run writes the cache of every module (builtins included); a warm one at most a few.
    assert len(untouched) >= len(first) // 2


def test_mypy_that_cannot_run_raises(tmp_path: Path) -> None:
    with pytest.raises(MypyError, match="mypy failed to run"):
        run_mypy(tmp_path, ["does_not_exist.py"], cache_dir=tmp_path / "cache")
    with pytest.raises(MypyError, match="config file not found"):
        run_mypy(tmp_path, ["x"], cache_dir=tmp_path / "c", config_file=tmp_path / "none.toml")

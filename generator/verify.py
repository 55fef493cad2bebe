"""Verification of rendered modules: the branch-free rule (LibCST) and `mypy --strict` (subprocess).

The hot path of a module is `Runner.__call__` plus every function of the same module it can
reach: methods referenced as `self.name`, module-level functions referenced by bare name, and every
function (or lambda) that `__init__` binds to an attribute `self._x` the hot path uses. Reachability
follows references, not only calls, so a helper passed along as a callback counts as hot too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from generator.diagnostics import Diagnostic

# Reflection and dynamic imports are per-call lookups the generator exists to remove.
_FORBIDDEN_CALLS = frozenset(
    {
        "isinstance",
        "issubclass",
        "hasattr",
        "getattr",
        "setattr",
        "__import__",
        "eval",
        "exec",
        "import_module",
    }
)
# Attributes of `os` (or names imported from it) that read the environment.
_ENV_NAMES = frozenset({"environ", "environb", "getenv"})
_RULE = "hot path must be branch-free"
_GUARD_FORM = "`if <rows> == 0: return <combine input>` without else"

_REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Violation(Diagnostic):
    """One breach of the branch-free rule, at a 1-based line and column of a module's source:
    a diagnostic whose path is the dotted module name."""

    @property
    def module(self) -> str:
        return self.path


# A forbidden node and the message for it; positions are attached only if any are found.
_Finding = tuple[cst.CSTNode, str]


@dataclass(frozen=True, slots=True)
class _Unit:
    """Hot code: a function of the module, or a lambda that `__init__` binds to an attribute."""

    name: str
    node: cst.FunctionDef | cst.Lambda
    self_name: str | None  # the name the unit uses for the Runner instance, if any


def check_branch_free(module: str, source: str) -> list[Violation]:
    """Check the hot path of a rendered runner module; return its violations sorted by position.

    `module` is the dotted module name used in the reports. A module that does not parse, lacks
    `class Runner`, or whose Runner lacks `__call__`, is itself a violation.
    """
    try:
        tree = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        return [Violation(module, exc.raw_line, exc.raw_column + 1, f"syntax error: {exc.message}")]
    findings = _ModuleChecker(tree).run()
    if not findings:
        return []
    # Positions cost a full code generation pass, so they are resolved only for a failing module.
    # Skipping the copy keeps the nodes the checker holds the keys of the position map.
    wrapper = MetadataWrapper(tree, unsafe_skip_copy=True)
    positions = wrapper.resolve(PositionProvider)
    violations = []
    for node, message in findings:
        start = positions[node].start
        violations.append(Violation(module, start.line, start.column + 1, message))
    return sorted(violations, key=lambda v: (v.line, v.column, v.message))


class _ModuleChecker:
    """Finds the hot units of one module and collects the violations inside them."""

    def __init__(self, tree: cst.Module) -> None:
        self.tree = tree
        self.functions: dict[str, cst.FunctionDef] = {
            stmt.name.value: stmt for stmt in tree.body if isinstance(stmt, cst.FunctionDef)
        }
        self.methods: dict[str, cst.FunctionDef] = {}
        self.bindings: dict[str, list[_Unit]] = {}

    def run(self) -> list[_Finding]:
        runner = next(
            (s for s in self.tree.body if isinstance(s, cst.ClassDef) and s.name.value == "Runner"),
            None,
        )
        if runner is None:
            return [(self.tree, "module defines no `class Runner` at top level")]
        self.methods = {
            stmt.name.value: stmt for stmt in runner.body.body if isinstance(stmt, cst.FunctionDef)
        }
        call = self.methods.get("__call__")
        if call is None:
            return [(runner, "class Runner defines no `__call__` (the hot path)")]
        init = self.methods.get("__init__")
        if init is not None:
            self.bindings = self._load_time_bindings(init)

        findings: list[_Finding] = []
        pending = [_Unit("Runner.__call__", call, _first_param(call))]
        seen: set[cst.CSTNode] = set()
        while pending:
            unit = pending.pop()
            if unit.node in seen:
                continue
            seen.add(unit.node)
            checker = _HotCodeChecker(self, unit, is_call=unit.node is call)
            unit.node.visit(checker)
            findings.extend(checker.findings)
            pending.extend(checker.reached)
        return findings

    def method_unit(self, name: str) -> _Unit:
        node = self.methods[name]
        return _Unit(f"Runner.{name}", node, _first_param(node))

    def function_unit(self, name: str) -> _Unit:
        return _Unit(name, self.functions[name], None)

    def _load_time_bindings(self, init: cst.FunctionDef) -> dict[str, list[_Unit]]:
        """Map `self._x` to every function or lambda `__init__` may assign to it."""
        self_name = _first_param(init)
        bindings: dict[str, list[_Unit]] = {}
        if self_name is None:
            return bindings
        collector = _AssignmentCollector(self_name)
        init.visit(collector)
        for attrs, value in collector.assignments:
            for attr in attrs:
                finder = _BoundFunctionFinder(self, self_name, attr)
                value.visit(finder)
                bindings.setdefault(attr, []).extend(finder.units)
        return bindings


def _first_param(func: cst.FunctionDef) -> str | None:
    params = func.params.posonly_params or func.params.params
    return params[0].name.value if params else None


def _self_attr(node: cst.BaseExpression, self_name: str | None) -> str | None:
    """The attribute name of `self.<name>`, or None for any other expression."""
    if (
        self_name is not None
        and isinstance(node, cst.Attribute)
        and isinstance(node.value, cst.Name)
        and node.value.value == self_name
    ):
        return node.attr.value
    return None


class _AssignmentCollector(cst.CSTVisitor):
    """Collects `self.a [, self.b] = value` assignments (plain and annotated) of a method."""

    def __init__(self, self_name: str) -> None:
        self.self_name = self_name
        self.assignments: list[tuple[list[str], cst.BaseExpression]] = []

    def _targets(self, target: cst.BaseExpression) -> list[str]:
        attr = _self_attr(target, self.self_name)
        if attr is not None:
            return [attr]
        if isinstance(target, cst.Tuple | cst.List):
            return [name for el in target.elements for name in self._targets(el.value)]
        return []

    def visit_Assign(self, node: cst.Assign) -> None:
        attrs = [name for t in node.targets for name in self._targets(t.target)]
        if attrs:
            self.assignments.append((attrs, node.value))

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        attrs = self._targets(node.target)
        if attrs and node.value is not None:
            self.assignments.append((attrs, node.value))


class _BoundFunctionFinder(cst.CSTVisitor):
    """Finds the functions an assigned value may evaluate to: references and lambdas, not callees.

    `self._x = self._a if flag else self._b` binds either; `self._x = make(self._a)` may wrap `_a`
    (a partial); `make` itself runs at load time, so a callee is not a candidate.
    """

    def __init__(self, owner: _ModuleChecker, self_name: str, attr: str) -> None:
        self.owner = owner
        self.self_name = self_name
        self.attr = attr
        self.units: list[_Unit] = []

    def visit_Lambda(self, node: cst.Lambda) -> bool:
        where = f"lambda bound to {self.self_name}.{self.attr} in Runner.__init__"
        self.units.append(_Unit(where, node, self.self_name))
        return False

    def visit_Call(self, node: cst.Call) -> bool:
        if not isinstance(node.func, cst.Name | cst.Attribute):
            node.func.visit(self)
        for arg in node.args:
            arg.value.visit(self)
        return False

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        attr = _self_attr(node, self.self_name)
        if attr is not None and attr in self.owner.methods:
            self.units.append(self.owner.method_unit(attr))
        node.value.visit(self)
        return False  # `x.name` is not a reference to a function called `name`

    def visit_NamedExpr(self, node: cst.NamedExpr) -> bool:
        node.value.visit(self)
        return False

    def visit_Name(self, node: cst.Name) -> None:
        if node.value in self.owner.functions:
            self.units.append(self.owner.function_unit(node.value))


def _is_zero_row_guard(node: cst.If) -> bool:
    """`if <expr> == 0: return ...` with no elif/else and nothing else in its body."""
    test = node.test
    if not (
        isinstance(test, cst.Comparison)
        and len(test.comparisons) == 1
        and isinstance(test.comparisons[0].operator, cst.Equal)
        and isinstance(test.comparisons[0].comparator, cst.Integer)
        and test.comparisons[0].comparator.evaluated_value == 0
    ):
        return False
    if node.orelse is not None:
        return False
    body = node.body
    if isinstance(body, cst.SimpleStatementSuite):
        statements: Sequence[cst.BaseSmallStatement] = body.body
    elif len(body.body) == 1 and isinstance(body.body[0], cst.SimpleStatementLine):
        statements = body.body[0].body
    else:
        return False
    return len(statements) == 1 and isinstance(statements[0], cst.Return)


# Constructs the hot path may not contain, whatever their context (branches, loops, imports).
_FORBIDDEN_NODES: dict[type[cst.CSTNode], str] = {
    cst.Else: "else branch",
    cst.IfExp: "conditional expression",
    cst.Match: "match statement",
    cst.Try: "try statement",
    cst.TryStar: "try statement",
    cst.While: "while loop",
    cst.ListComp: "list comprehension",
    cst.SetComp: "set comprehension",
    cst.DictComp: "dict comprehension",
    cst.GeneratorExp: "generator expression",
    cst.Import: "import statement",
    cst.ImportFrom: "from-import statement",
}
# Nodes whose named child binds or labels rather than reads: parameters, keywords, attributes,
# targets (the child's field; a keyword argument's may be None).
_LABEL_FIELDS: dict[type[cst.CSTNode], str] = {
    cst.Arg: "keyword",
    cst.Param: "name",
    cst.FunctionDef: "name",
    cst.ClassDef: "name",
    cst.AssignTarget: "target",
    cst.AnnAssign: "target",
    cst.NamedExpr: "target",
    cst.AsName: "name",
    cst.Attribute: "attr",
}


class _HotCodeChecker(cst.CSTVisitor):
    """Reports every forbidden construct in one hot unit and the hot units it reaches."""

    def __init__(self, owner: _ModuleChecker, unit: _Unit, *, is_call: bool) -> None:
        self.owner = owner
        self.unit = unit
        self.findings: list[_Finding] = []
        self.reached: list[_Unit] = []
        self.elifs: set[cst.If] = set()
        # Names that bind or label rather than read: parameters, keywords, attributes, targets.
        self.not_read: set[cst.CSTNode] = set()
        self.allowed_guard: cst.If | None = None
        self.extra_guards: set[cst.If] = set()
        self.top_level_ifs: set[cst.If] = set()
        if is_call and isinstance(unit.node, cst.FunctionDef):
            self._classify_top_level_ifs(unit.node)

    def _classify_top_level_ifs(self, call: cst.FunctionDef) -> None:
        body = call.body
        statements = body.body if isinstance(body, cst.IndentedBlock) else ()
        for stmt in statements:
            if not isinstance(stmt, cst.If):
                continue
            self.top_level_ifs.add(stmt)
            if _is_zero_row_guard(stmt):
                if self.allowed_guard is None:
                    self.allowed_guard = stmt
                else:
                    self.extra_guards.add(stmt)

    def report(self, node: cst.CSTNode, what: str, hint: str = "") -> None:
        self.findings.append((node, f"{what} in {self.unit.name} ({_RULE}{hint})"))

    def on_visit(self, node: cst.CSTNode) -> bool:
        what = _FORBIDDEN_NODES.get(type(node))
        if what is not None:
            self.report(node, what)
        label = _LABEL_FIELDS.get(type(node))
        if label is not None and getattr(node, label) is not None:
            self.not_read.add(getattr(node, label))
        return super().on_visit(node)

    # -- branches -------------------------------------------------------------------------------

    def visit_If(self, node: cst.If) -> None:
        if isinstance(node.orelse, cst.If):
            self.elifs.add(node.orelse)
        if node is self.allowed_guard:
            return
        if node in self.elifs:
            self.report(node, "elif branch")
        elif node in self.extra_guards:
            self.report(node, "second zero-row guard", f"; only one {_GUARD_FORM} is allowed")
        elif node in self.top_level_ifs:
            hint = f"; the one allowed `if` is a zero-row guard {_GUARD_FORM}"
            self.report(node, "if statement", hint)
        else:
            self.report(node, "if statement")

    def visit_BooleanOperation(self, node: cst.BooleanOperation) -> None:
        op = "and" if isinstance(node.operator, cst.And) else "or"
        self.report(node, f"boolean `{op}`")

    # -- loops ----------------------------------------------------------------------------------

    def visit_For(self, node: cst.For) -> None:
        self.report(node, "async for loop" if node.asynchronous is not None else "for loop")

    # -- imports, environment, reflection -------------------------------------------------------

    def visit_Call(self, node: cst.Call) -> None:
        func = node.func
        if isinstance(func, cst.Name) and func.value in _FORBIDDEN_CALLS:
            self.report(node, f"call of `{func.value}`")
        elif (
            isinstance(func, cst.Attribute)
            and isinstance(func.value, cst.Name)
            and func.value.value in ("builtins", "importlib")
            and func.attr.value in _FORBIDDEN_CALLS
        ):
            self.report(node, f"call of `{func.value.value}.{func.attr.value}`")

    def visit_Attribute(self, node: cst.Attribute) -> None:
        value, attr = node.value, node.attr.value
        if isinstance(value, cst.Name) and value.value == "os" and attr in _ENV_NAMES:
            self.report(node, f"environment read `os.{attr}`")
        self_attr = _self_attr(node, self.unit.self_name)
        if self_attr is None and isinstance(value, cst.Name) and value.value == "Runner":
            self_attr = attr
        if self_attr is None:
            return
        if self_attr in self.owner.methods:
            self.reached.append(self.owner.method_unit(self_attr))
        self.reached.extend(self.owner.bindings.get(self_attr, ()))

    def visit_Name(self, node: cst.Name) -> None:
        if node in self.not_read:
            return
        if node.value in _ENV_NAMES:
            self.report(node, f"environment read `{node.value}`")
        if node.value in self.owner.functions:
            self.reached.append(self.owner.function_unit(node.value))


def compile_errors(package: str, name: str, source: str) -> list[str]:
    """`package/name:line:col: error: ...` when a rendered .py file is not valid Python."""
    if not name.endswith(".py"):
        return []
    try:
        compile(source, f"{package}/{name}", "exec", dont_inherit=True)
    except SyntaxError as exc:
        return [f"{package}/{name}:{exc.lineno or 1}:{exc.offset or 1}: error: {exc.msg}"]
    except ValueError as exc:  # source code with a null byte
        return [f"{package}/{name}:1:1: error: {exc}"]
    return []


class ImportCheckError(RuntimeError):
    """The import check itself could not run (no interpreter, a crash without a report)."""


# Imports the package, then every runner module its RUNNERS table names, each failure one line.
_IMPORT_SCRIPT = """
import importlib, sys
sys.path[:0] = sys.argv[2:]
package = sys.argv[1]
try:
    modules = importlib.import_module(package).RUNNERS.values()
    names = [package] + [package + "." + m for m in modules]
except BaseException as exc:
    print(package + ": error: cannot import: " + type(exc).__name__ + ": " + str(exc))
    sys.exit(1)
failed = False
for name in names:
    try:
        importlib.import_module(name)
    except BaseException as exc:
        print(name + ": error: cannot import: " + type(exc).__name__ + ": " + str(exc))
        failed = True
sys.exit(1 if failed else 0)
"""


def check_import(root: Path, package: str, *, extra_paths: Sequence[Path] = ()) -> list[str]:
    """Import `root/package` and each of its runner modules in a fresh interpreter (nothing it
    runs can touch this process); return one error line per module that fails to import."""
    command = [
        sys.executable,
        "-c",
        _IMPORT_SCRIPT,
        package,
        str(root.resolve()),
        *(str(p.resolve()) for p in extra_paths),
    ]
    try:
        done = subprocess.run(
            command, cwd=root, capture_output=True, text=True, check=False, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImportCheckError(f"could not import {package} in a subprocess: {exc}") from exc
    errors = [line for line in done.stdout.splitlines() if ": error: " in line]
    if done.returncode == 0 or errors:
        return errors
    output = (done.stdout + done.stderr).strip()[-2000:] or "(no output)"
    raise ImportCheckError(f"the import check exited {done.returncode}:\n{output}")


class MypyError(RuntimeError):
    """mypy itself could not run (not installed, crashed, bad usage), as opposed to type errors."""


def run_mypy(
    root: Path,
    targets: Sequence[str],
    *,
    cache_dir: Path,
    extra_paths: Sequence[Path] = (),
    config_file: Path | None = None,
) -> list[str]:
    """Run `mypy --strict` over `targets` (paths relative to `root`) and return its error lines.

    mypy runs in a subprocess of this interpreter with cwd=`root`; `extra_paths` go on MYPYPATH so
    imports such as `moe_runtime` resolve. The mypy settings of `config_file` apply (default: this
    repository's pyproject.toml). `cache_dir` is created if needed and kept, so later runs are
    incremental. Returns an empty list when the targets type-check. Raises MypyError when mypy
    could not run or failed without reporting errors.
    """
    if not targets:
        raise ValueError("run_mypy needs at least one target (a path relative to root)")
    config = config_file if config_file is not None else _REPO_ROOT / "pyproject.toml"
    if not config.is_file():
        raise MypyError(f"mypy config file not found: {config}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--strict",
        "--config-file",
        str(config.resolve()),
        "--cache-dir",
        str(cache_dir.resolve()),
        "--show-column-numbers",
        "--no-pretty",
        "--no-color-output",
        "--no-error-summary",
        "--",
        *targets,
    ]
    env = dict(os.environ)
    search = [str(p.resolve()) for p in extra_paths]
    if env.get("MYPYPATH"):
        search.append(env["MYPYPATH"])
    env["MYPYPATH"] = os.pathsep.join(search)
    try:
        done = subprocess.run(
            command, cwd=root, env=env, capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise MypyError(f"could not start mypy ({' '.join(command)}): {exc}") from exc
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    # mypy exits 0 when clean, 1 when it found errors, 2 on a crash or usage error.
    if done.returncode == 0 or (done.returncode == 1 and errors):
        return errors
    output = (done.stdout + done.stderr).strip() or "(no output)"
    raise MypyError(f"mypy failed to run (exit {done.returncode}) in {root}:\n{output}")

"""Renderer: plans → file texts, through Jinja templates that only substitute and loop.

Output is a pure function of the matrix bytes, the templates and the generator version: no
timestamps, no absolute paths, no set iteration, `\n` line endings and one trailing newline.

Text from the matrix (descriptions, reasons, its path) is data, never code: templates pass it
through the `py` filter (a Python literal made by repr()) or the `docstring` filter (escaped so it
cannot end the docstring), and headers show it through `comment_text`. Names need neither: the
loader accepts only `[a-z0-9_]` names (fullmatch).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2

from generator import __version__, feature_table
from generator.fragments import LINE_LENGTH, NAMES, STEPS, TemplateProblem
from generator.model import Combination, Exclusion
from generator.plan import Plan
from generator.writer import header_line

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
RUNNER_TEMPLATE = "runner.py.j2"
INIT_TEMPLATE = "init.py.j2"


@dataclass(frozen=True, slots=True)
class Inputs:
    """What every generated file depends on besides its plan."""

    matrix_path: str  # relative, posix: it appears in headers and error messages
    matrix_bytes: bytes


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["py"] = py_literal
    env.filters["docstring"] = docstring_text
    env.filters["tuple"] = tuple_expression
    env.filters["frozen_dict"] = frozen_dict
    return env


def py_literal(value: str | tuple[str, ...]) -> str:
    """A Python literal of `value` by repr(); a string with no quotes inside gets double quotes,
    the style of the hand-written code (repr's escaping is kept as it is)."""
    text = repr(value)
    if isinstance(value, str) and "'" not in value and '"' not in value:
        return '"' + text[1:-1] + '"'
    return text


def tuple_expression(items: tuple[str, ...]) -> str:
    """A tuple display of Python expressions on one line, as `ruff format` writes it: `()`,
    `(a,)`, `(a, b)`."""
    if len(items) == 1:
        return f"({items[0]},)"
    return f"({', '.join(items)})"


def frozen_dict(entries: Iterable[tuple[tuple[str, ...], str]]) -> str:
    """`MappingProxyType({...})` of string-tuple keys and string values, laid out as `ruff
    format` keeps it at the top level: `({})` when empty, else one entry a line (the value in
    parentheses on a line of its own where the entry would not fit)."""
    lines = [_dict_entry(key, value, indent=8) for key, value in entries]
    if not lines:
        return "MappingProxyType({})"
    return "MappingProxyType(\n    {\n" + "\n".join(lines) + "\n    }\n)"


def _dict_entry(key: tuple[str, ...], value: str, *, indent: int) -> str:
    head = " " * indent + "(" + ", ".join(py_literal(part) for part in key) + "): "
    line = f"{head}{py_literal(value)},"
    if len(line) <= LINE_LENGTH:
        return line
    inner = " " * (indent + 4)
    parts = "\n".join(inner + py_literal(part) for part in _string_pieces(value, indent + 4))
    return f"{head}(\n{parts}\n{' ' * indent}),"


def _string_pieces(value: str, indent: int) -> list[str]:
    """`value` cut after spaces into pieces whose literals fit a line at `indent` (implicit
    concatenation, which `ruff format` keeps one piece a line when they do not fit together); a
    word longer than a line stays whole."""
    width = LINE_LENGTH - indent
    pieces = [""]
    for word in value.split(" "):
        candidate = f"{pieces[-1]}{word} "
        if pieces[-1] and len(py_literal(candidate)) > width:
            pieces.append(f"{word} ")
        else:
            pieces[-1] = candidate
    pieces[-1] = pieces[-1][:-1]
    return pieces


def docstring_text(text: str) -> str:
    """`text` as it may stand inside a triple-quoted docstring and read back as itself: every
    backslash, every quote next to another quote or at the end (which could close the string)
    and every unprintable character but the newlines the wrapping put there are escaped."""
    escaped = re.sub(r'"(?="|\Z)', r'\\"', text.replace("\\", "\\\\"))
    return "".join(
        c if c.isprintable() or c == "\n" else c.encode("unicode_escape").decode("ascii")
        for c in escaped
    )


def comment_text(text: str) -> str:
    """`text` for a `#` comment: as it is when printable, else its repr() (a newline in a
    comment would start a line of code)."""
    return text if text.isprintable() else repr(text)


def check_fragments(templates_dir: Path) -> None:
    """The fragments under `templates_dir` are those `generator.fragments.STEPS` registers: a
    registered step without its file, or a file no step registers, is an error naming both."""
    problems = []
    for kind, steps in STEPS.items():
        folder = templates_dir / "fragments" / kind
        present = {path.name.removesuffix(".py.j2") for path in folder.glob("*.py.j2")}
        problems += [
            f"templates/fragments/{kind}/{name}.py.j2 is missing: the {kind} step {name!r} "
            f"({decision}) is registered in generator/fragments.py"
            for name, decision in steps.items()
            if name not in present
        ]
        problems += [
            f"templates/fragments/{kind}/{name}.py.j2 is unused: generator/fragments.py "
            f"registers no {kind} step {name!r}"
            for name in sorted(present - steps.keys())
        ]
    if problems:
        raise TemplateProblem("; ".join(problems))


def _runner_templates(plan: Plan) -> tuple[str, ...]:
    """The templates of one plan's module (making the plan checked each against the registry)."""
    steps = {
        "load": plan.load_fragments,
        "call": plan.call_fragments,
        "check": plan.checks.fragments,
    }
    return (
        RUNNER_TEMPLATE,
        *(f"fragments/{kind}/{name}.py.j2" for kind, names in steps.items() for name in names),
    )


class _Digests:
    """Input hashes for headers, each template set hashed once.

    A runner module's hash covers what it is rendered from: its combination, the names and
    descriptions of its three matrix entries, its plan's records (every matrix fact the code
    follows is in one) and its templates, so adding or changing another entry of the matrix
    leaves its header as it is. The package's `__init__.py` depends on the whole matrix: its hash
    covers the matrix bytes. Both cover the generator version and the matrix path."""

    def __init__(self, inputs: Inputs) -> None:
        self.base = _head(inputs)
        self.matrix = _head(inputs)
        self.matrix.update(inputs.matrix_bytes)  # once, however many files
        self.templates: dict[str, bytes] = {}

    def of_runner(self, plan: Plan) -> str:
        digest = self.base.copy()
        entries = (plan.a2a, plan.dispatch, plan.quant)
        facts = (
            plan.combination.slash_name,
            *(f"{entry.name}: {entry.description}" for entry in entries),
            *(repr(record) for record in plan.records),
        )
        digest.update("\n".join(facts).encode())
        return self._with_templates(digest, _runner_templates(plan))

    def of_init(self) -> str:
        return self._with_templates(self.matrix.copy(), (INIT_TEMPLATE,))

    def _with_templates(self, digest: hashlib._Hash, templates: Iterable[str]) -> str:
        for name in sorted(set(templates)):
            if name not in self.templates:
                self.templates[name] = (TEMPLATES_DIR / name).read_bytes()
            digest.update(f"\ntemplate {name}\n".encode())
            digest.update(self.templates[name])
        return digest.hexdigest()


def _head(inputs: Inputs) -> hashlib._Hash:
    """A hash of what every header covers: the generator version and the matrix path."""
    digest = hashlib.sha256()
    digest.update(f"generator {__version__}\n".encode())
    digest.update(f"matrix {inputs.matrix_path}\n".encode())
    return digest


def header(inputs: Inputs, what: str, digest: str) -> str:
    return f"{header_line(comment_text(inputs.matrix_path))}\n# {what}\n# inputs sha256: {digest}"


def render_runner(env: jinja2.Environment, plan: Plan, inputs: Inputs, digests: _Digests) -> str:
    what = (
        f"combination: a2a={plan.combination.a2a} quant={plan.combination.quant} "
        f"dispatch={plan.combination.dispatch}"
    )
    context = {
        "plan": plan,
        "names": NAMES,
        "header": header(inputs, what, digests.of_runner(plan)),
    }
    return _render(env, RUNNER_TEMPLATE, context)


def render_init(
    env: jinja2.Environment,
    plans: Iterable[Plan],
    excluded: Iterable[tuple[Combination, Exclusion]],
    inputs: Inputs,
    digests: _Digests,
) -> str:
    what = "dispatch table of every combination"
    context = {
        "header": header(inputs, what, digests.of_init()),
        "matrix_path": inputs.matrix_path,
        "runners": sorted((plan.combination.key, plan.module_name) for plan in plans),
        "excluded": sorted((c.key, e.reason) for c, e in excluded),
    }
    return _render(env, INIT_TEMPLATE, context)


def render_all(
    plans: Iterable[Plan],
    excluded: Iterable[tuple[Combination, Exclusion]],
    inputs: Inputs,
) -> dict[str, str]:
    """Every file of the generated package, keyed by its path relative to the output directory
    (the writer adds its manifest)."""
    check_fragments(TEMPLATES_DIR)
    env = _environment()
    digests = _Digests(inputs)
    plans = sorted(plans, key=lambda plan: plan.combination)
    excluded = tuple(excluded)
    files = {f"{plan.module_name}.py": render_runner(env, plan, inputs, digests) for plan in plans}
    files["__init__.py"] = render_init(env, plans, excluded, inputs, digests)
    files[feature_table.FILE_NAME] = feature_table.features_text(
        plans, excluded, inputs.matrix_path
    )
    files["py.typed"] = ""
    return dict(sorted(files.items()))


def _render(env: jinja2.Environment, template: str, context: Mapping[str, object]) -> str:
    try:
        text = env.get_template(template).render(context)
    except jinja2.TemplateError as error:
        raise TemplateProblem(f"{_template_position(error, template)}: {error}") from error
    return text.rstrip("\n") + "\n"


def _template_position(error: jinja2.TemplateError, template: str) -> str:
    """`templates/<name>:<line>` of the innermost template frame (Jinja maps frames to them)."""
    if isinstance(error, jinja2.TemplateSyntaxError):
        return f"templates/{error.name or template}:{error.lineno}"
    position = f"templates/{template}"
    traceback = error.__traceback__
    while traceback is not None:
        filename = traceback.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            name = Path(filename).resolve().relative_to(TEMPLATES_DIR.resolve()).as_posix()
            position = f"templates/{name}:{traceback.tb_lineno}"
        traceback = traceback.tb_next
    return position

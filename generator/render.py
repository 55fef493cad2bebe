"""Renderer: plans → file texts, through Jinja templates that only substitute and loop.

Output is a pure function of the matrix bytes, the templates and the generator version: no
timestamps, no absolute paths, no set iteration, `\n` line endings and one trailing newline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2

from generator import __version__
from generator.model import Combination, Exclusion
from generator.plan import Plan
from generator.writer import GENERATED_MARKER

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
RUNNER_TEMPLATE = "runner.py.j2"
INIT_TEMPLATE = "init.py.j2"


class TemplateProblem(Exception):
    """A template that fails to render (a missing variable, a syntax error); names the template."""


@dataclass(frozen=True, slots=True)
class Inputs:
    """What every generated file depends on besides its plan."""

    matrix_path: str  # relative, posix: it appears in headers and error messages
    matrix_bytes: bytes


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _runner_templates(plan: Plan) -> tuple[str, ...]:
    return (
        RUNNER_TEMPLATE,
        *(f"fragments/load/{name}.py.j2" for name in plan.load_fragments),
        *(f"fragments/call/{name}.py.j2" for name in plan.call_fragments),
        *(f"fragments/check/{name}.py.j2" for name in plan.checks.fragments),
    )


def inputs_digest(inputs: Inputs, templates: Iterable[str]) -> str:
    """sha256 over the matrix, each template used (name and bytes) and the generator version."""
    digest = hashlib.sha256()
    digest.update(f"generator {__version__}\n".encode())
    digest.update(f"matrix {inputs.matrix_path}\n".encode())
    digest.update(inputs.matrix_bytes)
    for name in sorted(set(templates)):
        digest.update(f"\ntemplate {name}\n".encode())
        digest.update((TEMPLATES_DIR / name).read_bytes())
    return digest.hexdigest()


def header(inputs: Inputs, what: str, templates: Iterable[str]) -> str:
    return (
        f"# {GENERATED_MARKER} by `python -m generator --matrix {inputs.matrix_path}`; "
        "do not edit, regenerate.\n"
        f"# {what}\n"
        f"# inputs sha256: {inputs_digest(inputs, templates)}"
    )


def render_runner(env: jinja2.Environment, plan: Plan, inputs: Inputs) -> str:
    what = (
        f"combination: a2a={plan.combination.a2a} quant={plan.combination.quant} "
        f"dispatch={plan.combination.dispatch}"
    )
    context = {"plan": plan, "header": header(inputs, what, _runner_templates(plan))}
    return _render(env, RUNNER_TEMPLATE, context)


def render_init(
    env: jinja2.Environment,
    plans: Iterable[Plan],
    excluded: Iterable[tuple[Combination, Exclusion]],
    inputs: Inputs,
) -> str:
    context = {
        "header": header(inputs, "dispatch table of every combination", (INIT_TEMPLATE,)),
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
    """Every file of the generated package, keyed by its path relative to the output directory."""
    env = _environment()
    plans = sorted(plans, key=lambda plan: plan.combination)
    files = {f"{plan.module_name}.py": render_runner(env, plan, inputs) for plan in plans}
    files["__init__.py"] = render_init(env, plans, excluded, inputs)
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

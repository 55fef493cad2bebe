"""Fuzz of the matrix's free text: any matrix the loader accepts renders to modules that compile,
import, and carry the text back unchanged as data; nothing in the text ever runs.

Descriptions, exclusion reasons, a backend name and the matrix path (headers and `__init__.py`
show it) are drawn from arbitrary Unicode and from payloads that would execute if pasted into a
docstring, a string, a comment or an f-string.
"""

from __future__ import annotations

import ast
import importlib
import itertools
import re
import sys
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from generator.combinations import enumerate_combinations, excluded_combinations
from generator.diagnostics import MatrixError
from generator.loader import load_matrix
from generator.plan import plan_combination
from generator.render import Inputs, render_all
from tests.generator.malformed.expected import BASE_MATRIX

BASE = yaml.safe_load(BASE_MATRIX.read_text())
ROOT = Path(tempfile.mkdtemp(prefix="matrix-text-fuzz-"))
SENTINEL = ROOT / "sentinel"
_TOUCH = f"__import__('pathlib').Path({str(SENTINEL)!r}).touch()"
PAYLOADS = (
    f'"""\n{_TOUCH}\n"""',
    f"'''\n{_TOUCH}\n'''",
    f"{{{_TOUCH}}}",
    f"\n{_TOUCH}\n#",
    f"\r{_TOUCH}\r",
    f'"\n{_TOUCH}\n"',
    "\\",
    '"',
    "\x00\x0c\x85\u2028",
)
NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
_counter = itertools.count()

# Surrogates cannot be written to a UTF-8 file, so no matrix holds one.
_ANY = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
TEXT = st.one_of(
    _ANY.filter(str.strip),  # a blank description or reason is refused: draw few of those
    st.tuples(_ANY, st.sampled_from(PAYLOADS), _ANY).map("".join),
    st.sampled_from(PAYLOADS),
)
_VALID_NAME = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
NAMES = st.one_of(
    _VALID_NAME,
    _VALID_NAME,
    _VALID_NAME,
    st.from_regex(r"[a-z]{1,5}", fullmatch=True).map(lambda n: n + "\n"),
    _ANY,
)


def _matrix_text(backend: str, descriptions: list[str], reason: str) -> str:
    """The base matrix with backend `none` renamed and the descriptions replaced, as YAML."""
    backends = {k: dict(v) for k, v in BASE["a2a_backends"].items()}
    backends = {backend if k == "none" else k: v for k, v in backends.items()}
    formats = {k: dict(v) for k, v in BASE["dispatch_formats"].items()}
    quants = {k: dict(v) for k, v in BASE["quant_methods"].items()}
    entries = [*backends.values(), *formats.values(), *quants.values()]
    for entry, text in zip(entries, itertools.cycle(descriptions), strict=False):
        entry["description"] = text
    matrix = {
        "a2a_backends": backends,
        "dispatch_formats": formats,
        "quant_methods": quants,
        "exclusions": [dict(BASE["exclusions"][0], reason=reason)],
    }
    return yaml.safe_dump(matrix, allow_unicode=True, sort_keys=False)


def _squeezed(text: str) -> str:
    """Without whitespace: wrapping may move line breaks, nothing else."""
    return "".join(text.split())


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    backend=NAMES,
    descriptions=st.lists(TEXT, min_size=1, max_size=4),
    reason=TEXT,
    matrix_path=TEXT,
)
def test_accepted_matrix_text_is_data_never_code(
    backend: str, descriptions: list[str], reason: str, matrix_path: str
) -> None:
    case = ROOT / f"case{next(_counter)}"
    case.mkdir()
    text = _matrix_text(backend, descriptions, reason)
    path = case / "m.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        matrix = load_matrix(path)
    except MatrixError:
        event("refused by the loader")
        return  # nothing is rendered from it
    event("accepted")
    assert NAME.fullmatch(backend), f"the loader accepted the name {backend!r}"
    plans = [plan_combination(matrix, c) for c in enumerate_combinations(matrix)]
    files = render_all(plans, excluded_combinations(matrix), Inputs(matrix_path, text.encode()))

    package = f"fuzz_{case.name}"
    (case / package).mkdir()
    for name, source in files.items():
        if name.endswith(".py"):
            compile(source, name, "exec", dont_inherit=True)
            header = source.splitlines()[:3]
            assert all(line.startswith("# ") for line in header), header
        (case / package / name).write_text(source, encoding="utf-8")

    sys.path.insert(0, str(case))
    try:
        generated = importlib.import_module(package)
        assert generated._MATRIX == matrix_path
        for key, module_name in generated.RUNNERS.items():
            module = importlib.import_module(f"{package}.{module_name}")
            assert (module.A2A_BACKEND, module.QUANT_METHOD, module.DISPATCH_FORMAT) == key
            doc = _squeezed(ast.get_docstring(ast.parse(files[f"{module_name}.py"])) or "")
            assert doc == _squeezed(module.__doc__ or "")
            plan = next(p for p in plans if p.module_name == module_name)
            for description in (
                plan.a2a.description,
                plan.dispatch.description,
                plan.quant.description,
            ):
                assert _squeezed(description) in doc
        ((key, stored),) = generated.EXCLUDED.items()
        assert stored == reason
        try:
            generated.select(*key)
        except generated.UnsupportedCombination as error:
            assert f"is excluded by {matrix_path}: {reason};" in str(error)
        else:
            raise AssertionError("an excluded key was selected")
    finally:
        sys.path.remove(str(case))
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]
    assert not SENTINEL.exists(), "text from the matrix ran as code"

"""Loads a matrix file into the frozen model, reporting every problem at once.

The file is composed, not constructed (`yaml.compose` with the safe loader), so every key and value
keeps its line and column and no tag is ever turned into an object. Each mapping's known keys are
popped and the leftovers reported; every diagnostic says what is valid and, where one is close,
what was probably meant. Checks that need a whole valid set of axes (stale exclusions, an empty
result) run only when the axes themselves are valid, so one typo does not cascade.

A file that cannot be read at all (missing, a directory, unreadable, larger than
MAX_MATRIX_BYTES) is reported at line 1, column 1, so every diagnostic has a real position. The file
is read exactly once (a FIFO works): `read_matrix` returns its bytes, which both the model and the
headers' input hash are made from.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from generator.combinations import Enumeration, enumerate_matrix
from generator.diagnostics import Diagnostic, MatrixError, closest
from generator.model import (
    COMBINE_INPUTS,
    DISPATCH_OUTPUTS,
    A2ABackend,
    DispatchFormat,
    Exclusion,
    Location,
    Matrix,
    QuantMethod,
    key_names,
    matrix_keys,
    required_key_names,
)
from generator.naming import NAME

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

E = TypeVar("E", bound=Enum)
# Defined names in file order, with constant-time membership (a matrix may have 10,000 formats).
_Names = dict[str, None]
T = TypeVar("T")

_TAG = "tag:yaml.org,2002:"
_STR, _BOOL, _NULL, _MAP, _SEQ = (_TAG + t for t in ("str", "bool", "null", "map", "seq"))
# The tags the safe resolver gives plain YAML; any other tag was written by hand and is refused.
_KIND = {
    _STR: "a string",
    _BOOL: "a boolean",
    _NULL: "nothing (null)",
    _TAG + "int": "an integer",
    _TAG + "float": "a number",
    _TAG + "timestamp": "a date",
    _MAP: "a mapping",
    _SEQ: "a list",
}
_TRUE, _FALSE = ("true", "True", "TRUE"), ("false", "False", "FALSE")

# Names become module names `{a2a}__{quant}__{dispatch}` (generator.naming).
# Always matched with fullmatch: `$` alone would accept a name ending in a newline.
NAME_PATTERN = f"^{NAME}$"
_NAME = re.compile(NAME_PATTERN)
# A real matrix is a few kB; past this it is not a matrix (or /dev/zero), and reading stops.
MAX_MATRIX_BYTES = 32 * 1024 * 1024
# A matrix nests a few levels (mappings of lists of mappings); past this it is not a matrix. The
# limit is ours so that the refusal does not depend on libyaml's build or the recursion limit.
MAX_NESTING = 64
WILDCARD = "*"

TOP_KEYS = key_names(Matrix)
BACKEND_KEYS = key_names(A2ABackend)
FORMAT_KEYS = key_names(DispatchFormat)
QUANT_KEYS = key_names(QuantMethod)
EXCLUSION_KEYS = key_names(Exclusion)
# Keys an entry may leave out (the support facts of generated/FEATURES.md), by section.
OPTIONAL_KEYS = {
    cls: tuple(sorted(set(key_names(cls)) - set(required_key_names(cls))))
    for cls in (A2ABackend, DispatchFormat, QuantMethod)
}
_NOUNS = {
    "a2a_backends": "a2a backend",
    "dispatch_formats": "dispatch format",
    "quant_methods": "quant method",
}
_SECTION_OF = {noun: section for section, noun in _NOUNS.items()}


@dataclass(frozen=True, slots=True)
class Rule:
    """When `key` has one of `values`, `other` must have one of `allowed`; reported at `key`."""

    key: str
    values: tuple[str, ...]
    other: str
    allowed: tuple[str, ...]
    why: str


_MORI_OUTPUTS = ("MoriEPNormalDispatchOutput", "MoriEPLLDispatchOutput", "MoriEPV2DispatchOutput")
# The dispatch outputs whose dispatcher takes each combine input back, in COMBINE_INPUTS' order:
# SGLang 0.5.23's EPv2 combine takes the normal combine input (token_dispatcher/moriep.py:1572).
_COMBINED_FROM = tuple(
    (dispatch,) + (("MoriEPV2DispatchOutput",) if dispatch == "MoriEPNormalDispatchOutput" else ())
    for dispatch in DISPATCH_OUTPUTS[: len(COMBINE_INPUTS)]
)
_FLOAT8 = ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")
# Property combinations that no planner can turn into a runner.
FORMAT_RULES = (
    Rule(
        "layout", ("masked_slabs",), "id_space", ("slab_index",),
        "slabs carry no per-row ids: the slab index is the local expert",
    ),
    Rule(
        "layout", ("masked_slabs",), "row_count", ("masked_m",),
        "only masked_m says which rows of a slab are valid",
    ),
    Rule(
        "id_space", ("slab_index",), "layout", ("masked_slabs",),
        "only masked slabs have a slab index",
    ),
    Rule(
        "row_count", ("masked_m",), "layout", ("masked_slabs",),
        "masked_m counts the valid rows of each slab",
    ),
    Rule(
        "id_space", ("local_with_minus_one", "slab_index"), "sink", ("local",),
        "-1 ids and rows past masked_m must go to the sink: AITER indexes memory with the raw id",
    ),
    Rule(
        "sink", ("local",), "id_space", ("local_with_minus_one", "slab_index"),
        "the sink id L only exists in a local id space",
    ),
    Rule(
        "truncate_to_recv_cap", ("true",), "row_count", ("total_recv",),
        "recv_cap comes with MORI's capacity buffers and their total_recv",
    ),
    Rule(
        "row_count", ("total_recv",), "dispatch_output", _MORI_OUTPUTS,
        "only MORI's dispatch outputs carry total_recv",
    ),
    Rule(
        "row_count", ("masked_m",), "dispatch_output", ("DeepEPLLDispatchOutput",),
        "only DeepEP's low-latency dispatch output carries masked_m",
    ),
    *(
        Rule(
            "combine_input", (combine,), "dispatch_output", dispatches,
            "a combine input goes back to the dispatcher whose output the runner consumed",
        )
        for dispatches, combine in zip(_COMBINED_FROM, COMBINE_INPUTS, strict=True)
    ),
)  # fmt: skip
QUANT_RULES = (
    Rule(
        "kernel_quant", ("No",), "weight_kind", ("bf16",),
        "an unquantized kernel cannot read quantized weights",
    ),
    Rule(
        "weight_kind", ("bf16",), "kernel_quant", ("No",),
        "bf16 weights run the unquantized kernel",
    ),
    Rule(
        "weight_kind", ("fp4",), "kernel_quant", ("per_1x32",),
        "fp4 weights come with e8m0 scales per 1x32 group",
    ),
    Rule(
        "kernel_quant", ("per_1x32",), "weight_kind", ("fp4", "fp8"),
        "per_1x32 is AITER's mxfp4 path, and from v0.1.16.post1 its mxfp8 one",
    ),
    Rule(
        "weight_kind", ("fp8", "int4", "fp4"), "has_weight_scales", ("true",),
        "quantized weights need their scales",
    ),
    Rule(
        "weight_dtype", ("bfloat16", "float16", "float32"), "weight_kind", ("bf16",),
        "weights stored in a 16- or 32-bit float dtype are unquantized",
    ),
    Rule("weight_dtype", _FLOAT8, "weight_kind", ("fp8",), "float8 weights are fp8"),
    Rule(
        "weight_dtype", ("float4_e2m1fn_x2",), "weight_kind", ("fp4",),
        "float4_e2m1fn_x2 weights are fp4",
    ),
)  # fmt: skip


def load_matrix(path: str | os.PathLike[str]) -> Matrix:
    """Load and validate a matrix file. Raises MatrixError, and nothing else, listing every
    problem as `path:line:col: error: message`."""
    return parse_matrix(path, read_matrix(path))


def read_matrix(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a matrix file, read once, at most MAX_MATRIX_BYTES; raises MatrixError."""
    return _Loader(_display(path)).read(path)


def parse_matrix(path: str | os.PathLike[str], data: bytes) -> Matrix:
    """Validate the bytes `read_matrix` returned for `path`; raises MatrixError, nothing else."""
    return parse_enumerated(path, data)[0]


def parse_enumerated(path: str | os.PathLike[str], data: bytes) -> tuple[Matrix, Enumeration]:
    """`parse_matrix`, with the enumeration that validating the exclusions produced."""
    shown = _display(path)
    try:
        return _Loader(shown).load(data)
    except MatrixError:
        raise
    except Exception as exc:  # the promise is "only MatrixError": even a bug becomes a diagnostic
        message = f"internal error while loading the matrix: {type(exc).__name__}: {exc}"
        raise MatrixError([Diagnostic(shown, 1, 1, message)]) from exc


def _display(path: object) -> str:
    try:
        return os.fsdecode(os.fspath(path))  # type: ignore[call-overload]
    except TypeError:
        return repr(path)


class _Loader:
    """One load of one file: the diagnostics found so far."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.diagnostics: list[Diagnostic] = []

    def error(self, node: Node, message: str) -> None:
        mark = node.start_mark
        self.error_at(mark.line + 1, mark.column + 1, message)

    def error_at(self, line: int, column: int, message: str) -> None:
        self.diagnostics.append(Diagnostic(self.path, line, column, message))

    def fail(self) -> MatrixError:
        return MatrixError(self.diagnostics)

    # -- reading -------------------------------------------------------------------------------

    def load(self, data: bytes) -> tuple[Matrix, Enumeration]:
        root = self.compose(self.decode(data))
        if not isinstance(root, MappingNode) or root.tag != _MAP:
            expected = f"a mapping with the keys {', '.join(TOP_KEYS)}"
            self.error(root, f"the matrix must be {expected}, got {_kind(root)}")
            raise self.fail()
        matrix, enumeration = self.matrix(root)
        if self.diagnostics or enumeration is None:
            raise self.fail()
        return matrix, enumeration

    def read(self, path: str | os.PathLike[str]) -> bytes:
        tried = f" (tried {os.path.abspath(path)})"
        if os.path.isdir(path):
            self.error_at(1, 1, f"cannot read the matrix: it is a directory, not a file{tried}")
            raise self.fail()
        try:
            with open(path, "rb") as stream:
                data = stream.read(MAX_MATRIX_BYTES + 1)
        except OSError as exc:
            self.error_at(1, 1, f"cannot read the matrix: {exc.strerror or exc}{tried}")
            raise self.fail() from None
        if len(data) > MAX_MATRIX_BYTES:
            limit = MAX_MATRIX_BYTES // (1024 * 1024)
            self.error_at(1, 1, f"cannot read the matrix: it is larger than {limit} MiB{tried}")
            raise self.fail()
        return data

    def decode(self, data: bytes) -> str:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            before = data[: exc.start]
            line = before.count(b"\n") + 1
            column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8-sig")) + 1
            message = f"not UTF-8 text: byte 0x{data[exc.start]:02x} ({exc.reason})"
            self.error_at(line, column, message)
            raise self.fail() from None

    def compose(self, text: str) -> Node:
        deep = _too_deep(text)
        if deep is not None:
            message = f"the YAML is nested too deeply: more than {MAX_NESTING} lists or mappings"
            self.error_at(*deep, f"{message} inside one another")
            raise self.fail()
        root = _fast_compose(text)
        if root is not None:
            return root
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, column = (1, 1) if mark is None else (mark.line + 1, mark.column + 1)
            message = exc.problem or exc.context or "unreadable YAML"
            if exc.problem and exc.context:
                where = exc.context_mark
                at = "" if where is None else f" at line {where.line + 1}:{where.column + 1}"
                message = f"{exc.context}{at}, {message}"
            if exc.context == "while scanning an alias":
                message += "; a wildcard is written '*', in quotes"
            if "'\\t'" in message:
                message += "; indent with spaces"
            self.error_at(line, column, f"invalid YAML: {message}")
            raise self.fail() from None
        except yaml.reader.ReaderError as exc:
            # Raised before any mark exists: derive the position from the character offset.
            line = text.count("\n", 0, exc.position) + 1
            column = exc.position - text.rfind("\n", 0, exc.position)
            character = exc.character if isinstance(exc.character, int) else ord(exc.character)
            message = f"invalid YAML: control character U+{character:04X} is not allowed"
            self.error_at(line, column, message)
            raise self.fail() from None
        except yaml.YAMLError as exc:
            self.error_at(1, 1, f"invalid YAML: {exc}")
            raise self.fail() from None
        if root is None:
            expected = ", ".join(TOP_KEYS)
            self.error_at(1, 1, f"the matrix file is empty; expected a mapping with {expected}")
            raise self.fail()
        return root

    # -- the file ------------------------------------------------------------------------------

    def matrix(self, root: MappingNode) -> tuple[Matrix, Enumeration | None]:
        """The model, with placeholders where something was wrong (then diagnostics say what),
        and its enumeration when the axes are valid enough to enumerate."""
        top = _Fields(self, root, root, "top level", TOP_KEYS)
        backends_node = top.section("a2a_backends")
        formats_node = top.section("dispatch_formats")
        quants_node = top.section("quant_methods")
        # Every name given counts for cross-references, even one whose entry is broken.
        # An empty or unreadable section says nothing about names: references go unchecked.
        format_names = dict.fromkeys(formats_node) if formats_node else None
        formats = self.entries("dispatch_formats", formats_node, self.dispatch_format)
        quants = self.entries("quant_methods", quants_node, self.quant_method)
        backends = self.entries(
            "a2a_backends",
            backends_node,
            lambda what, key, node: self.backend(what, key, node, format_names),
        )
        axes_valid = not self.diagnostics
        names = {
            "a2a": dict.fromkeys(backends_node) if backends_node else None,
            "quant": dict.fromkeys(quants_node) if quants_node else None,
            "dispatch": format_names,
        }
        exclusions = self.exclusions(top.pop("exclusions"), names)
        matrix = Matrix(self.path, backends, formats, quants, exclusions)
        if not axes_valid:
            return matrix, None
        enumeration = enumerate_matrix(matrix)
        self.diagnostics.extend(enumeration.problems)
        return matrix, enumeration

    def entries(
        self,
        section: str,
        entries: dict[str, tuple[ScalarNode, Node]] | None,
        build: Callable[[str, ScalarNode, MappingNode], T],
    ) -> tuple[T, ...]:
        built: list[T] = []
        for name, (key, node) in (entries or {}).items():
            what = f"{section}.{name}"
            if isinstance(node, MappingNode) and node.tag == _MAP:
                built.append(build(what, key, node))
            else:
                self.error(node, f"{what}: expected a mapping of properties, got {_kind(node)}")
        return tuple(built)

    def backend(
        self, what: str, key: ScalarNode, node: MappingNode, defined: _Names | None
    ) -> A2ABackend:
        props = _Fields(self, node, key, what, BACKEND_KEYS, OPTIONAL_KEYS[A2ABackend])
        description, formats = props.text("description"), props.formats(defined)
        support = props.properties(A2ABackend, only=OPTIONAL_KEYS[A2ABackend])
        return A2ABackend(key.value, description, formats, location=_at(key), **support)

    def dispatch_format(self, what: str, key: ScalarNode, node: MappingNode) -> DispatchFormat:
        props = _Fields(self, node, key, what, FORMAT_KEYS, OPTIONAL_KEYS[DispatchFormat])
        built = DispatchFormat(
            name=key.value, location=_at(key), **props.properties(DispatchFormat)
        )
        props.check(FORMAT_RULES)
        return built

    def quant_method(self, what: str, key: ScalarNode, node: MappingNode) -> QuantMethod:
        props = _Fields(self, node, key, what, QUANT_KEYS, OPTIONAL_KEYS[QuantMethod])
        built = QuantMethod(name=key.value, location=_at(key), **props.properties(QuantMethod))
        props.check(QUANT_RULES)
        return built

    def exclusions(
        self, node: Node | None, names: dict[str, _Names | None]
    ) -> tuple[Exclusion, ...]:
        """The exclusions whose pattern could be read (only those can be checked for staleness)."""
        if node is None:
            return ()
        if not isinstance(node, SequenceNode) or node.tag != _SEQ:
            self.error(node, f"exclusions: expected a list (write [] for none), got {_kind(node)}")
            return ()
        built: list[Exclusion] = []
        for index, item in enumerate(node.value):
            what = f"exclusions[{index}]"
            if not isinstance(item, MappingNode) or item.tag != _MAP:
                keys = ", ".join(EXCLUSION_KEYS)
                self.error(item, f"{what}: expected a mapping with {keys}, got {_kind(item)}")
                continue
            props = _Fields(self, item, item, what, EXCLUSION_KEYS)
            a2a = props.reference("a2a", "a2a backend", names["a2a"])
            quant = props.reference("quant", "quant method", names["quant"])
            dispatch = props.reference("dispatch", "dispatch format", names["dispatch"])
            reason = props.text("reason")
            if a2a is not None and quant is not None and dispatch is not None:
                built.append(Exclusion(a2a, quant, dispatch, reason, _at(item)))
        return tuple(built)

    # -- nodes ---------------------------------------------------------------------------------

    def mapping(self, node: MappingNode, what: str) -> dict[str, tuple[ScalarNode, Node]]:
        """A mapping's entries by key text; bad and duplicate keys are reported and dropped."""
        entries: dict[str, tuple[ScalarNode, Node]] = {}
        for key, value in node.value:
            if key.tag == _TAG + "merge":
                self.error(key, f"{what}: merge keys ('<<') are not supported; write the keys out")
            elif not isinstance(key, ScalarNode) or key.tag not in _KIND:
                self.error(key, f"{what}: expected a name as key, got {_kind(key)}")
            elif key.tag != _STR:
                self.error(key, f"{what}: expected a name as key, got {_got(key)}")
            elif key.value in entries:
                first = _at(entries[key.value][0])
                self.error(
                    key,
                    f"{what}: duplicate key '{key.value}' "
                    f"(first at line {first.line}:{first.column})",
                )
            else:
                entries[key.value] = (key, value)
        return entries

    def string(self, node: Node, what: str, expected: str) -> str | None:
        """The text of a string scalar; anything else is reported, with a hint to quote."""
        if isinstance(node, ScalarNode) and node.tag == _STR:
            return str(node.value)
        self.error(node, f"{what}: expected {expected}, got {_got(node)}")
        return None


class _Fields:
    """The properties of one mapping. Unknown keys are reported when it is built, and missing
    keys too, unless an unknown key is a close match (that diagnostic already says what was
    meant). Known keys are then popped one by one by the typed getters; a getter that fails
    reports why and returns a placeholder, which never leaves the loader."""

    def __init__(
        self,
        loader: _Loader,
        node: MappingNode,
        anchor: Node,
        what: str,
        keys: tuple[str, ...],
        optional: tuple[str, ...] = (),
    ) -> None:
        self.loader = loader
        self.what = what
        self.entries = loader.mapping(node, what)
        # Values that passed their own checks, as text, for the rules between properties.
        self.values: dict[str, tuple[str, Node]] = {}
        explained: set[str] = set()
        for name, (key, _) in self.entries.items():
            if name in keys:
                continue
            match = closest(name, keys)
            if match is not None and match not in self.entries:
                explained.add(match)
            loader.error(
                key, f"{what}: unknown key '{name}'{_did_you_mean(match)}; valid keys: "
                f"{', '.join(keys)}",
            )  # fmt: skip
        for name in keys:
            if name not in self.entries and name not in explained and name not in optional:
                loader.error(anchor, f"{what}: missing key '{name}'")

    def properties(
        self, cls: type[DataclassInstance], *, only: tuple[str, ...] | None = None
    ) -> dict[str, Any]:
        """Every key of `cls` (or those in `only`) read by the getter its type calls for (see
        generator/model.py); an optional key left out is left to the field's default."""
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in matrix_keys(cls):
            kind = hints[field.name]
            if (only is not None and field.name not in only) or (
                field.metadata.get("optional") and field.name not in self.entries
            ):
                continue
            if kind == tuple[str, ...] and field.metadata.get("choices"):
                values[field.name] = self.some_of(field.name, field.metadata["choices"])
            elif kind is bool:
                values[field.name] = self.flag(field.name)
            elif isinstance(kind, type) and issubclass(kind, Enum):
                values[field.name] = self.enum(field.name, kind)
            elif field.metadata.get("choices"):
                values[field.name] = self.one_of(field.name, field.metadata["choices"])
            else:
                values[field.name] = self.text(field.name)
        return values

    def pop(self, key: str) -> Node | None:
        entry = self.entries.pop(key, None)
        return None if entry is None else entry[1]

    def text(self, key: str) -> str:
        """A non-empty string."""
        node = self.pop(key)
        if node is None:
            return ""
        what = f"{self.what}.{key}"
        value = self.loader.string(node, what, "a string")
        if value is not None and not value.strip():
            self.loader.error(node, f"{what}: must not be empty")
        return value or ""

    def one_of(self, key: str, choices: tuple[str, ...]) -> str:
        """One of `choices`, as a string."""
        node = self.pop(key)
        if node is None:
            return choices[0]
        what = f"{self.what}.{key}"
        if isinstance(node, ScalarNode) and node.tag != _STR and node.value in choices:
            # YAML 1.1 reads an unquoted `No` as false: say so rather than "unknown value".
            self.loader.error(
                node, f"{what}: '{node.value}' is read as {_kind(node)}; quote it: \"{node.value}\""
            )
            return choices[0]
        value = self.loader.string(node, what, "one of " + ", ".join(choices))
        if value is None:
            return choices[0]
        if value not in choices:
            match = closest(value, choices)
            self.loader.error(
                node,
                f"{what}: unknown value '{value}'{_did_you_mean(match)}; "
                f"valid values: {', '.join(choices)}",
            )
            return choices[0]
        self.values[key] = (value, node)
        return value

    def some_of(self, key: str, choices: tuple[str, ...]) -> tuple[str, ...]:
        """A list (possibly empty) of distinct values from `choices`, in `choices`' order."""
        node = self.pop(key)
        what = f"{self.what}.{key}"
        if node is None:
            return ()
        if not isinstance(node, SequenceNode) or node.tag != _SEQ:
            self.loader.error(node, f"{what}: expected a list of {', '.join(choices)}")
            return ()
        listed: set[str] = set()
        for index, item in enumerate(node.value):
            value = self.loader.string(item, f"{what}[{index}]", "one of " + ", ".join(choices))
            if value is None:
                continue
            if value not in choices or value in listed:
                why = "listed twice" if value in listed else "unknown value"
                self.loader.error(
                    item, f"{what}[{index}]: {why} '{value}'; valid values: {', '.join(choices)}"
                )
            listed.add(value)
        return tuple(choice for choice in choices if choice in listed)

    def enum(self, key: str, enum: type[E]) -> E:
        """A member of `enum`, by value."""
        return enum(self.one_of(key, tuple(str(member.value) for member in enum)))

    def flag(self, key: str) -> bool:
        """`true` or `false`; YAML 1.1's other booleans (yes, no, on, off) are refused."""
        node = self.pop(key)
        if node is None:
            return False
        if isinstance(node, ScalarNode) and node.tag == _BOOL and node.value in _TRUE + _FALSE:
            value = node.value in _TRUE
            self.values[key] = ("true" if value else "false", node)
            return value
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            got = f"'{node.value}' (YAML 1.1 reads it as a boolean, other readers do not)"
        elif isinstance(node, ScalarNode) and node.tag == _STR:
            got = f"the string '{node.value}'"
        else:
            got = _kind(node)
        self.loader.error(node, f"{self.what}.{key}: expected true or false, got {got}")
        return False

    def section(self, key: str) -> dict[str, tuple[ScalarNode, Node]] | None:
        """A non-empty mapping of valid names to entries; None when it cannot be read."""
        node = self.pop(key)
        if node is None:
            return None
        if not isinstance(node, MappingNode) or node.tag != _MAP:
            self.loader.error(
                node, f"{key}: expected a mapping of names to entries, got {_kind(node)}"
            )
            return None
        entries = self.loader.mapping(node, key)
        for name, (name_node, _) in entries.items():
            if not _NAME.fullmatch(name):
                self.loader.error(name_node, f"{key}: invalid name '{name}'{_name_hint(name)}")
        if not entries:
            self.loader.error(node, f"{key}: empty; define at least one {_NOUNS[key]}")
        return entries

    def formats(self, defined: _Names | None) -> tuple[str, ...]:
        """A backend's non-empty list of distinct, defined dispatch format names."""
        node = self.pop("formats")
        what = f"{self.what}.formats"
        if node is None:
            return ()
        if not isinstance(node, SequenceNode) or node.tag != _SEQ:
            got = _kind(node)
            self.loader.error(node, f"{what}: expected a list of dispatch format names, got {got}")
            return ()
        if not node.value:
            self.loader.error(node, f"{what}: empty; list at least one dispatch format")
        listed: dict[str, Node] = {}
        for index, item in enumerate(node.value):
            where = f"{what}[{index}]"
            name = self.loader.string(item, where, "a dispatch format name")
            if name is None:
                continue
            if name in listed:
                first = _at(listed[name])
                self.loader.error(
                    item,
                    f"{where}: '{name}' is listed twice "
                    f"(first at line {first.line}:{first.column})",
                )
            elif defined is not None and name not in defined:
                self.loader.error(
                    item,
                    f"{where}: unknown dispatch format '{name}'"
                    f"{_did_you_mean(closest(name, defined))}; defined: {', '.join(defined)}",
                )
            else:
                listed[name] = item
        return tuple(listed)

    def reference(self, key: str, kind: str, defined: _Names | None) -> str | None:
        """An axis name or `*`; None when it is not one (or the key is missing)."""
        node = self.pop(key)
        if node is None:
            return None
        what = f"{self.what}.{key}"
        value = self.loader.string(node, what, f"'*' or a name from {_SECTION_OF[kind]}")
        if value is None or value == WILDCARD or defined is None or value in defined:
            return value
        self.loader.error(
            node,
            f"{what}: unknown {kind} '{value}'{_did_you_mean(closest(value, defined))}; "
            f"valid: *, {', '.join(defined)}",
        )
        return None

    def check(self, rules: Iterable[Rule]) -> None:
        """Properties that contradict each other make a format or method impossible to plan."""
        for rule in rules:
            if rule.key not in self.values or rule.other not in self.values:
                continue
            value, node = self.values[rule.key]
            other, other_node = self.values[rule.other]
            if value in rule.values and other not in rule.allowed:
                allowed = " or ".join(f"'{a}'" for a in rule.allowed)
                self.loader.error(
                    node,
                    f"{self.what}.{rule.key}: '{value}' requires {rule.other} {allowed}, not "
                    f"'{other}' (line {_at(other_node).line}): {rule.why}",
                )


def _too_deep(text: str) -> tuple[int, int] | None:
    """The line and column (from 1) where the text opens a list or mapping nested deeper than
    MAX_NESTING, or None (also when it is not valid YAML: the composer words that). Counted on
    the parser's event stream, which neither libyaml nor PyYAML produces recursively, and stopped
    at the first one too deep."""
    loaders: list[Any] = [yaml.SafeLoader]  # CSafeLoader is not a SafeLoader to the stubs
    if getattr(yaml, "CSafeLoader", None) and not yaml.reader.Reader.NON_PRINTABLE.search(text):
        loaders.insert(0, yaml.CSafeLoader)
    for loader in loaders:
        depth = 0
        try:
            for event in yaml.parse(text, Loader=loader):
                if isinstance(event, yaml.CollectionStartEvent):
                    depth += 1
                    if depth > MAX_NESTING:
                        mark = event.start_mark
                        return (1, 1) if mark is None else (mark.line + 1, mark.column + 1)
                elif isinstance(event, yaml.CollectionEndEvent):
                    depth -= 1
        except yaml.YAMLError:
            continue  # libyaml refuses what PyYAML may read: let the pure-Python parser count
        return None
    return None


def _fast_compose(text: str) -> Node | None:
    """The node tree by libyaml (ten times faster on a large matrix), or None when it is not
    available or the text has any problem: the pure-Python composer then runs and words the
    diagnostic. libyaml skips PyYAML's printable-character check, so that is made here first."""
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is None or yaml.reader.Reader.NON_PRINTABLE.search(text):
        return None
    try:
        root: Node | None = yaml.compose(text, Loader=loader)
    except yaml.YAMLError:
        return None
    return root


def _got(node: Node) -> str:
    """What a node is, for "expected X, got Y"; a scalar YAML resolved to a non-string shows its
    text, since quoting it is usually the fix."""
    if isinstance(node, ScalarNode) and node.tag in _KIND and node.tag != _STR and node.value:
        return f"'{node.value}', which YAML reads as {_kind(node)}; quote it if it is meant as text"
    return _kind(node)


def _kind(node: Node) -> str:
    if node.tag in _KIND:
        return _KIND[node.tag]
    tag = node.tag.replace(_TAG, "!!")
    return f"a value tagged '{tag}' (tags are not allowed: the matrix is plain YAML)"


def _did_you_mean(match: str | None) -> str:
    return "" if match is None else f" (did you mean '{match}'?)"


def _name_hint(name: str) -> str:
    rule = (
        ": names are lowercase letters and digits joined by single underscores, starting "
        "with a letter (they become module names a2a__quant__dispatch)"
    )
    fixed = re.sub(r"_+", "_", re.sub(r"[^a-z0-9_]", "_", name.lower())).strip("_")
    return rule + (f"; did you mean '{fixed}'?" if _NAME.fullmatch(fixed) else "")


def _at(node: Node) -> Location:
    return Location(node.start_mark.line + 1, node.start_mark.column + 1)

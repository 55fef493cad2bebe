"""The record a plan is made of, and the plan as projections of its ordered records.

A `Decision` says what was decided (topic, choice), why (the matrix fact: reason), and what it
contributes to the module: fragments at load, in the hot path and in the checked prologue
(`templates/fragments/<kind>/<name>.py.j2`), kernel keywords passed per call or bound at load,
imports, the values its fragments substitute, and what its checks verify on the device.

A `Plan` is one combination and its records (generator/plan.py makes them). The docstring,
`--explain`, the rendered code and the tests read only projections of those records, made here
once, in the order generator/fragments.py registers (the runner's program order and fused_moe's
keyword order). Making a plan checks the contract: a fragment or keyword that is not registered,
is registered under another topic, or is contributed twice, is an error naming both.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from generator.fragments import KERNEL_KEYWORDS, LINE_LENGTH, STEPS, TemplateProblem
from generator.model import A2ABackend, Combination, DispatchFormat, QuantMethod

# A value a fragment substitutes: Python source, a tuple of it, or an enum (its `.value`).
Value = str | tuple[str, ...] | Enum
_FIRST_PARTY = ("moe_runtime",)


@dataclass(frozen=True, slots=True)
class KernelArgument:
    keyword: str
    expression: str  # Python source in the generated module


@dataclass(frozen=True, slots=True)
class Import:
    module: str
    name: str = ""  # "" for `import module`


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision and everything the generated module owes to it."""

    topic: str  # the registry key of its fragments (generator/fragments.py)
    choice: str
    reason: str
    # Whether the docstring and --explain list it: a record that only states the frame every
    # runner shares, or a matrix fact the code follows as it is, is no decision worth a line.
    explained: bool = True
    load: tuple[str, ...] = ()
    call: tuple[str, ...] = ()
    check: tuple[str, ...] = ()
    kernel_arguments: tuple[KernelArgument, ...] = ()  # passed on every call
    bound_kernel_arguments: tuple[KernelArgument, ...] = ()  # bound into the kernel at load
    imports: tuple[Import, ...] = ()
    values: Mapping[str, Value] = field(default_factory=dict)
    device_checks: str = ""  # what its check fragments assert on the device (the checked line)

    def fragments(self, kind: str) -> tuple[str, ...]:
        return {"load": self.load, "call": self.call, "check": self.check}[kind]


@dataclass(frozen=True, slots=True)
class Checks:
    """The checked variant's prologue: its fragments, and the values they substitute."""

    fragments: tuple[str, ...]
    values: Mapping[str, Value]

    def __getitem__(self, name: str) -> Value:
        return self.values[name]


@dataclass(frozen=True, slots=True)
class Plan:
    """One combination and its ordered decision records, with the projections templates read.

    A template's `plan.<name>` that is no attribute is looked up as `plan[<name>]` (Jinja tries
    the attribute, then the item): the value a record contributes under that name, or, when no
    record does, an undefined that StrictUndefined reports with the template's name and line.
    """

    combination: Combination
    module_name: str
    a2a: A2ABackend
    dispatch: DispatchFormat
    quant: QuantMethod
    records: tuple[Decision, ...]
    # Projections of `records`, made once by __post_init__.
    decisions: tuple[Decision, ...] = field(init=False)  # the explained ones
    load_fragments: tuple[str, ...] = field(init=False)
    call_fragments: tuple[str, ...] = field(init=False)
    checks: Checks = field(init=False)
    kernel_arguments: tuple[KernelArgument, ...] = field(init=False)
    bound_kernel_arguments: tuple[KernelArgument, ...] = field(init=False)
    imports: tuple[str, ...] = field(init=False)  # the import block, a line each
    values: Mapping[str, Value] = field(init=False)

    def __post_init__(self) -> None:
        problems: list[str] = []
        fragments = {kind: _fragments(self.records, kind, problems) for kind in STEPS}
        values = _values(self.records, problems)
        call, bound = _kernel_arguments(self.records, problems)
        if problems:
            raise TemplateProblem(f"{self.combination.slash_name}: " + "; ".join(problems))
        projections = {
            "decisions": tuple(record for record in self.records if record.explained),
            "load_fragments": fragments["load"],
            "call_fragments": fragments["call"],
            "checks": Checks(fragments["check"], values),
            "kernel_arguments": call,
            "bound_kernel_arguments": bound,
            "imports": import_lines(i for record in self.records for i in record.imports),
            "values": values,
        }
        for name, projection in projections.items():
            object.__setattr__(self, name, projection)

    def __getitem__(self, name: str) -> Value:
        return self.values[name]

    def combine_call(self, hidden_states: str, *, indent: int) -> str:
        """The combine input built around `hidden_states`, one argument a line when several."""
        routing = self.values["combine_routing"]
        arguments = (hidden_states, *(routing if isinstance(routing, tuple) else (routing,)))
        if len(arguments) == 1:
            return f"{self.dispatch.combine_input}({hidden_states})"
        inner = " " * (indent + 4)
        lines = "".join(f"{inner}{argument},\n" for argument in arguments)
        return f"{self.dispatch.combine_input}(\n{lines}{' ' * indent})"


def _fragments(records: Iterable[Decision], kind: str, problems: list[str]) -> tuple[str, ...]:
    """The fragments of one kind, in the order generator/fragments.py registers them."""
    registered = STEPS[kind]
    chosen: dict[str, str] = {}
    for record in records:
        for name in record.fragments(kind):
            owner = registered.get(name)
            if owner is None:
                problems.append(
                    f"the record {record.topic!r} chose the {kind} step {name!r}, which "
                    "generator/fragments.py does not register"
                )
            elif owner != record.topic:
                problems.append(
                    f"the record {record.topic!r} chose the {kind} step {name!r}, which "
                    f"generator/fragments.py registers under {owner!r}"
                )
            elif name in chosen:
                problems.append(f"the {kind} step {name!r} is chosen twice")
            else:
                chosen[name] = record.topic
    order = list(registered)
    return tuple(sorted(chosen, key=order.index))


def _values(records: Iterable[Decision], problems: list[str]) -> Mapping[str, Value]:
    values: dict[str, Value] = {}
    owners: dict[str, str] = {}
    for record in records:
        for name, value in record.values.items():
            if name in owners:
                problems.append(
                    f"the records {owners[name]!r} and {record.topic!r} both contribute {name!r}"
                )
            owners[name] = record.topic
            values[name] = value
    return MappingProxyType(values)


def _kernel_arguments(
    records: tuple[Decision, ...], problems: list[str]
) -> tuple[tuple[KernelArgument, ...], tuple[KernelArgument, ...]]:
    """The keywords passed per call and bound at load, each in fused_moe's order."""
    seen: set[str] = set()

    def ordered(arguments: list[KernelArgument]) -> tuple[KernelArgument, ...]:
        for argument in arguments:
            if argument.keyword not in KERNEL_KEYWORDS:
                problems.append(
                    f"the kernel keyword {argument.keyword!r} is not in "
                    "generator/fragments.py's KERNEL_KEYWORDS"
                )
            elif argument.keyword in seen:
                problems.append(f"the kernel keyword {argument.keyword!r} is passed twice")
            seen.add(argument.keyword)
        known = [a for a in arguments if a.keyword in KERNEL_KEYWORDS]
        return tuple(sorted(known, key=lambda a: KERNEL_KEYWORDS.index(a.keyword)))

    call = ordered([a for record in records for a in record.kernel_arguments])
    bound = ordered([a for record in records for a in record.bound_kernel_arguments])
    return call, bound


def import_lines(imports: Iterable[Import]) -> tuple[str, ...]:
    """The import block as ruff's isort rules lay it out: the standard library, third parties,
    this project, a blank line between; in each, `import x` lines before `from x import` ones,
    both sorted; a `from` line longer than the line length holds one name a line."""
    sections: dict[int, dict[str, set[str]]] = {}
    for item in imports:
        root = item.module.split(".")[0]
        section = 0 if root in sys.stdlib_module_names else 2 if root in _FIRST_PARTY else 1
        sections.setdefault(section, {}).setdefault(item.module, set()).add(item.name)
    blocks = []
    for section in sorted(sections):
        modules = sections[section]
        lines = [f"import {m}" for m in sorted(modules) if "" in modules[m]]
        for module in sorted(modules):
            lines += _from_lines(module, sorted(modules[module] - {""}))
        blocks.append(lines)
    return tuple(line for i, block in enumerate(blocks) for line in ([""] * (i > 0) + block))


def _from_lines(module: str, names: list[str]) -> list[str]:
    line = f"from {module} import {', '.join(names)}"
    if not names or len(line) <= LINE_LENGTH:
        return [line] if names else []
    return [f"from {module} import (", *(f"    {name}," for name in names), ")"]

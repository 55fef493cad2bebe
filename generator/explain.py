"""Readable text for `--list` and `--explain`."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from generator.model import Combination, Exclusion
from generator.naming import module_name
from generator.plan import Plan


def list_combinations(
    combinations: Sequence[Combination], excluded: Sequence[tuple[Combination, Exclusion]]
) -> str:
    """One line per generated combination (key → module), then the excluded ones with reasons."""
    width = max((len(c.slash_name) for c in (*combinations, *(c for c, _ in excluded))), default=0)
    lines = [f"{len(combinations)} combinations:"]
    lines += [f"  {c.slash_name:<{width}}  -> {module_name(c)}" for c in combinations]
    if excluded:
        lines.append(f"{len(excluded)} excluded:")
        lines += [f"  {c.slash_name:<{width}}  -- {e.reason}" for c, e in excluded]
    else:
        lines.append("no exclusions")
    return "\n".join(lines) + "\n"


def explain_plan(plan: Plan) -> str:
    """Every decision of one plan, with its reason, and the steps of the generated hot path."""
    lines = [
        f"{plan.combination.slash_name} -> generated/{plan.module_name}.py",
        f"  a2a backend   {plan.a2a.name}: {plan.a2a.description}",
        f"  dispatch      {plan.dispatch.name}: {plan.dispatch.description}",
        f"  quant method  {plan.quant.name}: {plan.quant.description}",
        "decisions:",
    ]
    for decision in plan.decisions:
        lines.append(f"  {decision.topic}: {decision.choice}")
        lines += textwrap.wrap(
            decision.reason, width=96, initial_indent="      ", subsequent_indent="      "
        )
    lines.append("load time (Runner.__init__): " + ", ".join(plan.load_fragments))
    lines.append("hot path (Runner.__call__):  " + ", ".join(plan.call_fragments))
    lines.append(
        "kernel keywords bound at load: "
        + ", ".join(f"{a.keyword}={a.expression}" for a in plan.bound_kernel_arguments)
    )
    lines.append(
        "kernel keywords per call: "
        + (", ".join(f"{a.keyword}={a.expression}" for a in plan.kernel_arguments) or "none")
    )
    return "\n".join(lines) + "\n"

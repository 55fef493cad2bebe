"""Which optional `fused_moe` keywords a kernel takes, decided once when it is bound.

AITER's `fused_moe` grew keywords release by release; the release that added each one, read from
`def fused_moe(` in aiter/fused_moe.py at the ROCm/aiter tags:

- `moe_sorting_dispatch_policy`: already in v0.1.7.post2 (fused_moe.py:105), the oldest AITER the
  runners support;
- `swiglu_limit` and `gate_mode`: v0.1.14 (fused_moe.py:172-173, with `aiter.ops.flydsl.moe_common`
  and its `GateMode`; v0.1.13 has neither);
- `beta` and `linear_beta` (the Situv2 activation's): v0.1.19 (fused_moe.py:468-469);
- `output`, `no_combine` and `quant_dtype_a`: in no tagged release up to v0.1.20.post1, nor on
  AITER's main branch as of commit e4048607a5 (2026-08-22); SGLang 0.5.23 probes for the first two
  with `inspect.signature` (layers/moe/moe_runner/aiter.py:158, :165) and passes the third only for
  fp8 activations on interleaved fp4 weights (aiter.py:306-310).

SGLang probes on its hot path; here the bound kernel's keywords are read once, at bind time (AITER:
from the imported function's signature; the reference declares its own, `reference.KEYWORDS`), and
a runner that needs one the kernel lacks is refused at load, naming the AITER release it needs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from moe_runtime.types import ConfigError

ADDED_IN: dict[str, str] = {
    "moe_sorting_dispatch_policy": "v0.1.7.post2",
    "swiglu_limit": "v0.1.14",
    "gate_mode": "v0.1.14",
    "beta": "v0.1.19",
    "linear_beta": "v0.1.19",
    "output": "a release after v0.1.20.post1",
    "no_combine": "a release after v0.1.20.post1",
    "quant_dtype_a": "a release after v0.1.20.post1",
}


@dataclass(frozen=True, slots=True)
class KernelKeywords:
    """The optional keywords (of `ADDED_IN`) one kernel takes, and where that was read."""

    accepted: frozenset[str]
    source: str

    def __contains__(self, name: object) -> bool:
        return name in self.accepted

    def require(self, name: str, why: str, kernel: str) -> None:
        """Raise `ConfigError` unless the kernel takes `name`: `why` says what needs it, `kernel`
        which kernel is bound (`kernels.describe()` or the injected callable)."""
        if name not in self.accepted:
            raise ConfigError(
                f"{why} needs a kernel with a `{name}` keyword (AITER's fused_moe has it from "
                f"{ADDED_IN[name]}); the bound kernel ({kernel}) has none"
            )

    def describe(self) -> str:
        """`fused_moe keywords <taken>; lacks <the rest> (<source>)`, in `ADDED_IN`'s order."""
        taken = [name for name in ADDED_IN if name in self.accepted]
        lacking = [name for name in ADDED_IN if name not in self.accepted]
        text = "fused_moe keywords " + (", ".join(taken) if taken else "(none)")
        if lacking:
            text += "; lacks " + ", ".join(lacking)
        return f"{text} ({self.source})"


def declared(names: frozenset[str], source: str) -> KernelKeywords:
    """A kernel's own declaration of the optional keywords it takes."""
    unknown = sorted(names - ADDED_IN.keys())
    if unknown:
        raise ValueError(f"unknown fused_moe keywords {unknown}; known: {', '.join(ADDED_IN)}")
    return KernelKeywords(names, source)


def of_signature(kernel: object, source: str) -> KernelKeywords:
    """The optional keywords `kernel` takes by name, from its signature (read once, here).

    `**kwargs` is no evidence of a keyword, nor is a positional-only parameter; a kernel whose
    signature cannot be inspected takes none.
    """
    return KernelKeywords(
        frozenset(name for name in ADDED_IN if accepts_keyword(kernel, name)), source
    )


def accepts_keyword(kernel: object, name: str) -> bool:
    """Whether `kernel` takes a parameter called `name` by keyword (decided at load time).

    A kernel that only has `**kwargs` does not count, nor does a positional-only parameter; a
    kernel whose signature cannot be inspected takes no optional keyword.
    """
    if not callable(kernel):
        return False
    try:
        parameters = inspect.signature(kernel).parameters
    except (TypeError, ValueError):
        return False
    parameter = parameters.get(name)
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )

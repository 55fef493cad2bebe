"""The fused-MoE kernel that runners call, bound once, at import: AITER's or the reference.

`MOE_RUNTIME_KERNEL=aiter|reference` chooses; unset (or empty), a ROCm build of torch binds AITER
and any other build binds the PyTorch reference. A ROCm build where AITER does not load is an
error, never a silent fallback: the message says what is missing and how to choose the reference.
`describe()` says which binding is active and why, which optional `fused_moe` keywords it takes
(`KEYWORDS`, read once here: `moe_runtime.kernels.keywords`), which release's per_1x32 activation
rounding it follows (`ROUNDING`, from AITER's version or the reference's option:
`moe_runtime.kernels.rounding`), and which wire upscaler runners bind
(`moe_runtime.kernels.upscale`: Triton on GPUs where it imports, the torch code elsewhere).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from moe_runtime import enums
from moe_runtime.kernels import aiter_binding, keywords, rounding, upscale
from moe_runtime.kernels.binding import KernelBinding
from moe_runtime.kernels.keywords import KernelKeywords, accepts_keyword
from moe_runtime.types import ExpertWeights, FusedMoeKernel

if TYPE_CHECKING:
    # For the type checker these are always our mirrors; at run time they are AITER's own classes
    # when AITER is bound (same member names and integer values), assigned below.
    from moe_runtime.enums import ActivationType, QuantType

__all__ = [
    "BINDING",
    "ENV_VAR",
    "KEYWORDS",
    "ROUNDING",
    "ActivationType",
    "KernelBindingError",
    "KernelKeywords",
    "QuantType",
    "accepts_keyword",
    "choose_binding",
    "describe",
    "fused_moe",
    "keywords_of",
    "prepare_weights",
]

ENV_VAR = "MOE_RUNTIME_KERNEL"
_BINDINGS = ("aiter", "reference")
_INSTALL_HINT = (
    "AITER needs a ROCm build of torch on an AMD Instinct GPU (gfx942 or gfx950) and the "
    "amd-aiter package: pip install 'aiter-moe-runners[rocm]' (or pip install amd-aiter)"
)


class KernelBindingError(RuntimeError):
    """The requested fused-MoE kernel cannot be bound (unknown choice, or AITER does not load)."""


@dataclass(frozen=True, slots=True)
class _Bound:
    name: str
    description: str
    kernel: KernelBinding


def choose_binding(
    env: Mapping[str, str], hip_version: str | None, torch_version: str
) -> tuple[str, str]:
    """The binding to load (`"aiter"` or `"reference"`) and the reason, as `describe()` words it.

    `env` is the process environment, `hip_version` is `torch.version.hip` (None unless torch is
    a ROCm build). Raises `KernelBindingError` for a `MOE_RUNTIME_KERNEL` value it does not know.
    """
    requested = env.get(ENV_VAR, "")
    if requested in _BINDINGS:
        return requested, f"{ENV_VAR}={requested}"
    if requested:
        raise KernelBindingError(
            f"{ENV_VAR}={requested!r} is not a kernel binding; valid values: "
            f"{', '.join(_BINDINGS)}, or unset to bind AITER on ROCm builds of torch and the "
            "reference elsewhere"
        )
    if hip_version is not None:
        return "aiter", (
            f"{ENV_VAR} unset and torch is a ROCm build (torch {torch_version}, HIP {hip_version})"
        )
    return "reference", f"{ENV_VAR} unset and torch is not a ROCm build (torch {torch_version})"


def _unchanged(
    weights: ExpertWeights,
    quant_type: enums.QuantType,
    activation: enums.ActivationType | None,
) -> ExpertWeights:
    """The reference reads the logical layout as it is."""
    return weights


def _bind(name: str, reason: str) -> _Bound:
    """Import the chosen kernel (only that one) and everything runners need from it."""
    if name == "reference":
        from moe_runtime.kernels import reference

        bound = KernelBinding(
            fused_moe=reference.fused_moe,
            quant_type=enums.QuantType,
            activation_type=enums.ActivationType,
            prepare=_unchanged,
            keywords=keywords.declared(reference.KEYWORDS, "declared by the reference"),
            rounding=reference.fused_moe.rounding,
        )
        return _Bound(name, f"reference: {reason}", bound)
    try:
        aiter = aiter_binding.load()
    # Importing AITER off ROCm fails in many ways (ImportError, RuntimeError from rocminfo,
    # OSError from missing HIP libraries); each becomes the one error that says what to do.
    except Exception as error:
        raise KernelBindingError(
            f"cannot bind AITER ({reason}): loading it failed with {type(error).__name__}: "
            f"{error}. {_INSTALL_HINT}. To run the PyTorch reference kernel instead, set "
            f"{ENV_VAR}=reference."
        ) from error
    return _Bound(name, f"aiter {aiter.version} from {aiter.origin}: {reason}", aiter)


_BOUND = _bind(*choose_binding(os.environ, torch.version.hip, torch.__version__))

BINDING: str = _BOUND.name
fused_moe: FusedMoeKernel = _BOUND.kernel.fused_moe
KEYWORDS: KernelKeywords = _BOUND.kernel.keywords
ROUNDING: rounding.Mxfp4ActivationRule = _BOUND.kernel.rounding
if not TYPE_CHECKING:
    QuantType = _BOUND.kernel.quant_type
    ActivationType = _BOUND.kernel.activation_type


def describe() -> str:
    """One line: the active binding and why it was chosen, the optional fused_moe keywords it
    takes and lacks, its per_1x32 activation rounding rule, then the wire upscaler's binding."""
    return (
        f"{_BOUND.description}; {KEYWORDS.describe()}; {ROUNDING.describe()}; "
        f"wire upscale: {upscale.describe()}"
    )


def keywords_of(kernel: FusedMoeKernel) -> KernelKeywords:
    """The optional keywords `kernel` takes: the bound kernel's, read when it was bound, or an
    injected kernel's, read from its signature now (at load: never on a hot path)."""
    if kernel is fused_moe:
        return KEYWORDS
    return keywords.of_signature(kernel, f"read from the signature of {kernel!r}")


def prepare_weights(
    weights: ExpertWeights,
    quant_type: QuantType,
    *,
    activation: ActivationType | None = None,
) -> ExpertWeights:
    """Load-time weight preparation for the bound kernel: the logical layout unchanged for the
    reference, AITER's shuffles (and int4 packing) for AITER.

    per_1x32 needs `activation`: with Swiglu AITER runs its a16w4 kernels, which read a different
    weight layout from the a4w4 kernels every other activation runs.
    """
    if int(quant_type) == enums.QuantType.per_1x32 and activation is None:
        raise ValueError(
            "prepare_weights(..., QuantType.per_1x32) needs activation=: AITER's per_1x32 "
            "weight layout differs between Swiglu (a16w4 kernels) and other activations (a4w4); "
            "pass the layer's activation (ActivationType.Swiglu for mxfp4)"
        )
    return _BOUND.kernel.prepare(weights, quant_type, activation)

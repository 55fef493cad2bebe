"""What binding a fused-MoE kernel provides, whichever kernel it is (AITER's or the reference)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from moe_runtime.enums import ActivationType, QuantType
from moe_runtime.kernels.keywords import KernelKeywords
from moe_runtime.kernels.rounding import Mxfp4ActivationRule
from moe_runtime.types import ExpertWeights, FusedMoeKernel

PrepareWeights = Callable[[ExpertWeights, QuantType, ActivationType | None], ExpertWeights]


@dataclass(frozen=True, slots=True)
class KernelBinding:
    """The kernel runners call, the enums it reads, the load-time weight preparation its
    kernels need, the optional keywords it takes and the per_1x32 activation rounding it
    follows."""

    fused_moe: FusedMoeKernel
    quant_type: type[QuantType]
    activation_type: type[ActivationType]
    prepare: PrepareWeights
    keywords: KernelKeywords
    rounding: Mxfp4ActivationRule

"""How AITER's `fused_moe` rounds the stage inputs of per_1x32 calls on fp4 weights, by release.

Both stage inputs (the activations stage 1 reads, the stage-1 output stage 2 reads) are either
kept as they are (bf16: the a16w4 kernels), rounded to mxfp4 (E2M1 + e8m0 per 32) or rounded to
mxfp8 (e4m3 + e8m0 per 32). Which one is `q_dtype_a` in `fused_moe_` of aiter/fused_moe.py, chosen
per call from the activation, the gate mode, the call's row count M (`topk_ids.shape[0]`, every
row of the call) and the GPU, by rules that changed between releases (ROCm/aiter tags):

- v0.1.7.post2 (fused_moe.py:220-221, :785-791): Swiglu keeps bf16 (a16w4), every other
  activation rounds to mxfp4;
- v0.1.9 (fused_moe.py:221-229): Swiglu keeps bf16 below 512 rows or off gfx950, else mxfp8;
- v0.1.13 (fused_moe.py:266-274): the same from 256 rows;
- v0.1.14 (fused_moe.py:303-316; unchanged to v0.1.20.post1 :724-752): Swiglu on SEPARATED rows
  keeps bf16 below 256 rows (`GPTOSS_SWIGLU_MXFP4_BF16_BOUND`), else mxfp4; Swiglu on INTERLEAVE
  rows, and any activation on INTERLEAVE rows, keeps bf16 below 256 rows
  (`AITER_BF16_FP8_MOE_BOUND`) or off gfx950, else mxfp8; every other call rounds to mxfp4. A
  bf16 choice for an activation other than Swiglu keeps stage 1's input only: stage 2 keeps bf16
  for Swiglu alone (fused_moe_2stages, v0.1.20.post1 :3098-3106) and rounds to mxfp4 otherwise;
- Situv2 (v0.1.19, fused_moe.py:619-631; v0.1.20.post1 :732-744): bf16 in both stages.

How a stage rounds to mxfp4 or mxfp8, the scale of each group of 32 (`quant.MxScale`), changed
too:

- mxfp4, up to v0.1.15.post3: NEAREST. `fused_dynamic_mxfp4_quant_moe_sort` and the per_1x32
  HIP quantizer take `f32_to_e8m0_scale(absMax) * 0.25` (csrc/kernels/quant_kernels.cu, the
  `fp4_scale` lambda at v0.1.14:87-97; csrc/include/fp4_quant_utils.h:24-33 at v0.1.15);
- mxfp8, v0.1.9 to v0.1.14.post1: UNIT. `fused_moe_` casts the activations with
  `hidden_states.to(dtypes.fp8)` and unit e8m0 scales (v0.1.9 fused_moe.py:900-903, v0.1.14
  :1499-1505), and Swiglu's stage-2 input with `a2.to(dtypes.fp8)` (v0.1.9 :1000);
- mxfp8, v0.1.15: NEAREST, through `fused_dynamic_mxfp8_quant_moe_sort` (fused_moe.py:1599,
  :1723), whose kernel divides by `floor_pow2(448)` (quant_kernels.cu:1713-1730);
- both from v0.1.16: ROUND_UP, `fp_f32_to_e8m0_scale<kDefaultMxScaleRoundMode>` with
  `kDefaultMxScaleRoundMode = RoundUp` (csrc/include/mx_quant_utils.h:50, :130-143; the kernels at
  quant_kernels.cu v0.1.20.post1:117, :1855). It multiplies amax by a rounded `1 / max_pos`; for
  a bf16 or fp16 amax (what the stages quantize) that product never falls on the other side of a
  power of two from the exact quotient (for 6, 448 and 240), so the rule is exactly "the
  smallest e with amax / 2**e <= max_pos".

Not modelled: AITER's env overrides of the two bounds, gfx1250 (always mxfp4), tuned configs with
`ksplit > 1` on shuffled weights (bf16 stage-1 input whatever the rule) or whose kernels quantize
inside (`fuse_quant`, v0.1.13 onwards), and v0.1.14's stage-2 input of Silu on INTERLEAVE rows
without a clamp, which its Triton `fused_quant_fp8_sort` scales by yet another rule (amax rounded
up from 1.75 times a power of two: fused_mxfp4_quant.py:732-739). Which rule applies is decided
once, when `moe_runtime.kernels` binds the kernel (`for_version`); the reference kernel takes it
as a constructor option (default: the newest, `NEWEST`).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from moe_runtime.enums import ActivationType, GateMode
from moe_runtime.kernels.releases import Release, release_of
from moe_runtime.quant import MxScale


class Rounding(enum.Enum):
    """What a stage reads of its input activations."""

    BF16 = "bf16"  # as they are (the a16w4 kernels)
    MXFP4 = "mxfp4"
    MXFP8 = "mxfp8"


@dataclass(frozen=True, slots=True)
class Mxfp4ActivationRule:
    """One release's rule (see the module docstring); `arch` is the GPU it is applied for."""

    release: str  # the ROCm/aiter tag that introduced it
    swiglu_bound: int  # rows from which Swiglu stops keeping bf16 (0: it always keeps bf16)
    gate_mode_aware: bool  # v0.1.14's split between SEPARATED and INTERLEAVE rows
    mxfp4_scale: MxScale  # how a stage rounding to mxfp4 picks each group's scale
    mxfp8_scale: MxScale | None  # the same for mxfp8; None where no stage rounds to it
    arch: str = "gfx950"

    def __post_init__(self) -> None:
        # A rule that can choose mxfp8 (a Swiglu bound) says how it scales, and only then.
        if (self.swiglu_bound > 0) != (self.mxfp8_scale is not None):
            raise ValueError(
                f"{self.release}: mxfp8_scale is set exactly when swiglu_bound > 0, got "
                f"{self.swiglu_bound} and {self.mxfp8_scale}"
            )
        if self.mxfp4_scale is MxScale.UNIT:
            raise ValueError(f"{self.release}: mxfp4 has no unit-scale rule")

    def stages(
        self, activation: ActivationType, gate_mode: GateMode, rows: int
    ) -> tuple[Rounding, Rounding]:
        """The roundings of stage 1's and stage 2's inputs for a call of `rows` rows."""
        if activation == ActivationType.Situv2:
            # Situv2 (v0.1.19 on) runs only the a16w4 kernels: bf16 in both stages.
            return Rounding.BF16, Rounding.BF16
        swiglu = activation == ActivationType.Swiglu
        large = self.swiglu_bound > 0 and rows >= self.swiglu_bound
        fp8_or_bf16 = Rounding.MXFP8 if large and self.arch == "gfx950" else Rounding.BF16
        if not self.gate_mode_aware:
            return (fp8_or_bf16, fp8_or_bf16) if swiglu else (Rounding.MXFP4, Rounding.MXFP4)
        if swiglu and gate_mode == GateMode.SEPARATED:
            first = Rounding.MXFP4 if large else Rounding.BF16
            return first, first
        if swiglu or gate_mode == GateMode.INTERLEAVE:
            # bf16 on stage 2 is Swiglu's alone; other activations round it to mxfp4.
            second = fp8_or_bf16 if swiglu or fp8_or_bf16 is Rounding.MXFP8 else Rounding.MXFP4
            return fp8_or_bf16, second
        return Rounding.MXFP4, Rounding.MXFP4

    def scale(self, stage: Rounding) -> MxScale:
        """How this release's rounding of a stage to `stage` (MXFP4 or MXFP8) scales each group."""
        if stage is Rounding.BF16:
            raise ValueError("a stage kept in bf16 is not scaled")
        if stage is Rounding.MXFP4:
            return self.mxfp4_scale
        if self.mxfp8_scale is None:
            raise ValueError(f"AITER {self.release} rounds no stage to mxfp8")
        return self.mxfp8_scale

    def describe(self) -> str:
        """`per_1x32 activation rounding: AITER <release> rule (<what it does>, <arch>)`."""
        if self.swiglu_bound == 0:
            what = "Swiglu bf16, others mxfp4"
        elif not self.gate_mode_aware:
            what = f"Swiglu bf16 below {self.swiglu_bound} rows else mxfp8, others mxfp4"
        else:
            what = (
                f"Swiglu separated bf16 below {self.swiglu_bound} rows else mxfp4; interleave "
                f"bf16 below {self.swiglu_bound} rows else mxfp8; others mxfp4"
            )
        scales = f"mxfp4 scale {self.mxfp4_scale.value}"
        if self.mxfp8_scale is not None:
            scales += f", mxfp8 scale {self.mxfp8_scale.value}"
        return (
            f"per_1x32 activation rounding: AITER {self.release} rule ({what}; {scales}, "
            f"{self.arch})"
        )


# Oldest first: `for_version` takes the last one at or below the installed release.
_NEAREST, _ROUND_UP, _UNIT = MxScale.NEAREST, MxScale.ROUND_UP, MxScale.UNIT
RULES = (
    Mxfp4ActivationRule("v0.1.7.post2", 0, False, _NEAREST, None),
    Mxfp4ActivationRule("v0.1.9", 512, False, _NEAREST, _UNIT),
    Mxfp4ActivationRule("v0.1.13", 256, False, _NEAREST, _UNIT),
    Mxfp4ActivationRule("v0.1.14", 256, True, _NEAREST, _UNIT),
    Mxfp4ActivationRule("v0.1.15", 256, True, _NEAREST, _NEAREST),
    Mxfp4ActivationRule("v0.1.16", 256, True, _ROUND_UP, _ROUND_UP),
)
NEWEST = RULES[-1]


def _introduced(rule: Mxfp4ActivationRule) -> Release:
    release = release_of(rule.release)
    if release is None:
        raise ValueError(f"{rule.release!r} is not an AITER tag (v<major>.<minor>.<patch>)")
    return release


# The release each rule came with, read from its tag (written once, in RULES).
_RELEASES = tuple(_introduced(rule) for rule in RULES)


def for_version(version: str, arch: str = "gfx950") -> Mxfp4ActivationRule:
    """The rule of an AITER version string (`0.1.14`, `0.1.20.post1+rocm`); an unreadable one gets
    the newest rule (AITER's main branch), never an older guess."""
    release = release_of(version)
    if release is None:
        rule = NEWEST
    else:
        rule = RULES[0]
        for candidate, since in zip(RULES, _RELEASES, strict=True):
            if release >= since:
                rule = candidate
    return dataclasses.replace(rule, arch=arch)

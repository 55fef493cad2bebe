"""Every (a2a, quant, dispatch) through SGLang's own `MoeRunner.run`: natively, and with the
generated runner installed in its fused-function slot, on the same SGLang dispatch-output objects.

- Where SGLang is right (`known_wrong` is None), both make the same kernel call (every parameter,
  bit for bit, the same AITER enum members) and hand the same combine input (SGLang's own class).
- Where SGLang is wrong, the installed path matches the float64 dense MoE after the format's
  combine, and SGLang's path does not (it raises, or its result or its kernel call is wrong).
- Where SGLang's own path cannot run at all (its quant method raises before `MoeRunner.run`) or
  cannot run on a CPU (its MORI upscale is a ROCm Triton kernel), the test asserts exactly that.
Each comparison has a negative control.
"""

from __future__ import annotations

import re

import pytest
import torch
from sglang.srt.layers.moe.token_dispatcher import moriep

import generated
from moe_runtime.integrations import sglang as integration
from moe_runtime.testing.dynamic import QUANT_METHODS, has_path, known_wrong
from tests.runners.harness import dense_mismatch
from tests.sglang import compare, harness
from tests.sglang.conftest import COUNTS
from tests.sglang.paths import Paths, run_paths

EP_SIZES = (1, 2, 4)
# The keys whose path SGLang 0.5.13 has too. MORI EPv2 (mori_v2*) and the quant methods added for
# 0.5.23 (fp8_tensor, quark_w8a8_fp8, mxfp8, quark_w4a8_mxfp4: not in moe_runtime.testing.dynamic's
# QUANT_METHODS) have no 0.5.13 row, and this harness builds no 0.5.23 layer for them yet:
# tests/runners (test_mori_v2.py, test_end_to_end.py) check them against dense math.
CASES = [
    (key, ep)
    for key in sorted(generated.RUNNERS)
    if key[1] in QUANT_METHODS and has_path(key[0], key[2])
    for ep in EP_SIZES
]
FP4_WIRES = ("mori_normal_fp4", "mori_ll_fp4")
FP8_WIRES = ("mori_normal_fp8", "mori_ll_fp8")
FP8_WEIGHTS = ("fp8_block", "fp8_channel", "quark_int4fp8", "ct_w8a8_fp8")
FP4_WEIGHTS = ("mxfp4", "quark_w4a4_mxfp4")


def apply_raises(key: tuple[str, str, str]) -> str | None:
    """Why SGLang's quant method raises before it reaches MoeRunner.run, or None."""
    a2a, quant, dispatch = key
    if quant == "ct_w8a8_fp8" and dispatch != "standard":
        return r"has no attribute 'topk_output'"
    if a2a in ("mooncake", "nixl") and quant not in ("quark_int4fp8", "ct_w8a8_fp8"):
        return r"has no attribute 'expert_mask_gpu'"
    return None


def cpu_blocked(key: tuple[str, str, str]) -> bool:
    """SGLang upscales these MORI wires with a Triton kernel that has no CPU driver."""
    _, quant, dispatch = key
    return (quant in FP8_WEIGHTS and dispatch in FP4_WIRES) or (
        quant in FP4_WEIGHTS and dispatch in FP8_WIRES
    )


def declared_differences(key: tuple[str, str, str], ep_size: int) -> list[str]:
    """Call differences where both paths are right: at EP 1 the maskless methods (SGLang passes
    no mask) are right by luck of there being no remote experts; the runner keeps its mask."""
    _, quant, dispatch = key
    if ep_size == 1 and quant in ("quark_int4fp8", "ct_w8a8_fp8") and dispatch != "standard":
        return ["expert_mask: NoneType vs Tensor"]
    return []


def _combined(paths: Paths, which: str) -> torch.Tensor:
    return harness.combined(paths.dispatched, [getattr(r, which) for r in paths.ranks])


@pytest.mark.parametrize(("key", "ep_size"), CASES, ids=[f"{'/'.join(k)}-ep{e}" for k, e in CASES])
def test_installed_runner_against_sglang(key: tuple[str, str, str], ep_size: int) -> None:
    a2a, quant, dispatch = key
    paths = run_paths(key, ep_size)
    if _apply_raised(paths, key):
        return
    for rank in paths.ranks:
        assert not isinstance(rank.installed, Exception), rank.installed
        assert type(rank.installed).__module__.startswith("sglang."), type(rank.installed)
    if _cpu_blocked(paths, key, key):
        return
    wrong = known_wrong(a2a, quant, dispatch, ep_size=ep_size, hidden_pad=0) is not None
    _compare(paths, key, ep_size, wrong=wrong)


def _apply_raised(paths: Paths, key: tuple[str, str, str], label: str = "") -> bool:
    """Whether SGLang cannot run `key` at all: then every rank's apply raised before
    MoeRunner.run, as `apply_raises` says (asserted and counted under `label`)."""
    raises = apply_raises(key)
    if raises is None:
        return False
    for rank in paths.ranks:
        assert isinstance(rank.native, AttributeError), rank.native
        assert re.search(raises, str(rank.native)), rank.native
    COUNTS[f"{label}sglang cannot run (apply raises)"] += 1
    return True


def _cpu_blocked(
    paths: Paths, key: tuple[str, str, str], verdict: tuple[str, str, str], label: str = ""
) -> bool:
    """Whether SGLang's path for `key` needs its ROCm Triton upscale (by the `verdict` key's
    wire): then it raised on a CPU, and the installed path is compared with the dense MoE."""
    if not cpu_blocked(verdict):
        return False
    _, quant, dispatch = key
    for rank in paths.ranks:
        assert isinstance(rank.native, RuntimeError), rank.native
        assert "active drivers" in str(rank.native), rank.native
    installed = _combined(paths, "installed")
    assert dense_mismatch(installed, paths.expected, quant, dispatch) is None
    assert dense_mismatch(torch.zeros_like(installed), paths.expected, quant, dispatch)
    COUNTS[f"{label}sglang cannot run on CPU (Triton upscale); installed vs dense"] += 1
    return True


def _compare(
    paths: Paths, key: tuple[str, str, str], ep_size: int, *, wrong: bool, label: str = ""
) -> None:
    """Exact where SGLang is right; where it is `wrong`, the installed path is the dense MoE and
    SGLang's is not. Each with a negative control; counted under `label`."""
    _, quant, dispatch = key
    installed = _combined(paths, "installed")
    if not wrong:
        for rank in paths.ranks:
            assert not isinstance(rank.native, Exception), rank.native
            assert rank.native_call is not None and rank.installed_call is not None
            assert compare.call_differences(
                rank.native_call, rank.installed_call
            ) == declared_differences(key, ep_size)
            assert compare.combine_differences(rank.native, rank.installed) == []
            # Negative controls: one changed id, one changed output element, our own class.
            assert compare.call_differences(
                rank.native_call, compare.perturbed_call(rank.installed_call)
            )
            assert compare.combine_differences(
                rank.native, compare.perturbed_combine(rank.installed)
            )
            assert compare.combine_differences(rank.native, harness.as_ours(rank.installed))
        if declared_differences(key, ep_size):
            # Then both must also be the dense MoE.
            assert dense_mismatch(installed, paths.expected, quant, dispatch) is None
            assert (
                dense_mismatch(_combined(paths, "native"), paths.expected, quant, dispatch) is None
            )
        COUNTS[f"{label}exact"] += 1
        return
    # SGLang is wrong here: the installed path matches the dense MoE, SGLang's does not.
    assert dense_mismatch(installed, paths.expected, quant, dispatch) is None
    failures = [r.native for r in paths.ranks if isinstance(r.native, Exception)]
    if quant == "mxfp4" and dispatch.replace("mori_v2", "mori_normal") in FP4_WIRES:
        # The reference kernel reads fp4 activations as AITER's a4w4 kernels would, so the flaw
        # shows in the call: fp4 rows and scales handed to the Swiglu (a16w4, bf16-input) kernel.
        for rank in paths.ranks:
            assert rank.native_call is not None and rank.installed_call is not None
            assert rank.native_call["hidden_states"].dtype == torch.float4_e2m1fn_x2
            assert rank.native_call["a1_scale"] is not None
            assert rank.native_call["activation"] is harness.aiter.ActivationType.Swiglu
            assert rank.installed_call["hidden_states"].dtype == torch.bfloat16
            assert rank.installed_call["a1_scale"] is None
    elif not failures:
        assert dense_mismatch(_combined(paths, "native"), paths.expected, quant, dispatch)
    # Negative control: one rank's output zeroed is caught by the same dense comparison.
    zeroed = [r.installed for r in paths.ranks]
    zeroed[0] = zeroed[0]._replace(hidden_states=torch.zeros_like(zeroed[0].hidden_states))
    if paths.dispatched.outputs[0].hidden_states.numel():
        assert dense_mismatch(
            harness.combined(paths.dispatched, zeroed), paths.expected, quant, dispatch
        )
    COUNTS[f"{label}dense (sglang wrong)"] += 1


# SGLang 0.5.23's MORI mxfp8 wire (DispatchDtype.mxfp8, token_dispatcher/moriep.py:250): fp8 rows
# with one e8m0 scale per 32, which its pre-permute hands AITER as they are (moe_runner/aiter.py:
# 464-471). Wrong on every weight this harness builds: fp4 (per_1x32) weights get fp8 rows that
# AITER's per_1x32 fp4 kernels take only with `quant_dtype_a` (the a8w4 path, which SGLang sets
# for interleaved weights on gfx95 only, aiter.py:306-310), so the reference kernel refuses them;
# and two known 0.5.23 defects: bf16 weights get PER_128X128 with those e8m0 scales
# (aiter.py:406-407), fp8 block / per-token weights their own quant type with an e8m0 a1_scale
# (aiter.py:389-402).
MXFP8_WIRES = ("mori_normal_mxfp8", "mori_ll_mxfp8")
MXFP8_CASES = [
    (key, ep)
    for key in sorted(generated.RUNNERS)
    if key[1] in QUANT_METHODS and key[2] in MXFP8_WIRES and harness.RELEASE != "0.5.13"
    for ep in EP_SIZES
]


def test_sglang_enables_the_mxfp8_wire_with_this_aiter() -> None:
    """SGLang turns SGLANG_MORI_DISPATCH_DTYPE=mxfp8 into its mxfp8 wire only when AITER's
    `get_hip_quant` takes `scale_type` (moriep.py:130-150, 929-939); the fake AITER does."""
    if harness.RELEASE == "0.5.13":
        assert not hasattr(moriep.DispatchDtype, "mxfp8")
        return
    moriep._aiter_supports_mxfp8_dispatch.cache_clear()
    assert moriep._aiter_supports_mxfp8_dispatch()
    moriep._aiter_supports_mxfp8_dispatch.cache_clear()


@pytest.mark.parametrize(
    ("key", "ep_size"), MXFP8_CASES, ids=[f"{'/'.join(k)}-ep{e}" for k, e in MXFP8_CASES]
)
def test_installed_runner_on_the_mxfp8_wire(key: tuple[str, str, str], ep_size: int) -> None:
    quant = key[1]
    paths = run_paths(key, ep_size)
    if _apply_raised(paths, key, "mxfp8 wire: "):
        return
    for rank in paths.ranks:
        assert not isinstance(rank.installed, Exception), rank.installed
    for rank in paths.ranks:
        if quant in FP4_WEIGHTS:
            assert isinstance(rank.native, ValueError), rank.native
            assert "float8_e4m3fn do not fit quant_type per_1x32" in str(rank.native)
        elif rank.native_call is not None:
            # The defect itself: e8m0 scales under a quant type that reads fp32 ones.
            assert rank.native_call["a1_scale"].dtype == torch.float8_e8m0fnu
            assert rank.native_call["quant_type"] is not harness.aiter.QuantType.per_1x32
    _compare(paths, key, ep_size, wrong=True, label="mxfp8 wire: ")


# SGLang 0.5.23's MORI EPv2 (`_MoriEPv2DispatcherImplNormal`, its default): its normal dispatch
# output with combine's staging buffer `expert_output`, which its AITER runner passes as
# `output=` when fused_moe takes it (moe_runner/aiter.py:161-165, 249-257); received scales are
# strided views of MORI's wider scale rows (moriep.py:1536-1545).
V2_CASES = [
    (key, ep)
    for key in sorted(generated.RUNNERS)
    if key[1] in QUANT_METHODS and key[2].startswith("mori_v2") and harness.RELEASE != "0.5.13"
    for ep in EP_SIZES
]


@pytest.mark.parametrize(
    ("key", "ep_size"), V2_CASES, ids=[f"{'/'.join(k)}-ep{e}" for k, e in V2_CASES]
)
def test_installed_runner_on_mori_epv2(key: tuple[str, str, str], ep_size: int) -> None:
    a2a, quant, dispatch = key
    paths = run_paths(key, ep_size)
    if _apply_raised(paths, key, "mori EPv2: "):
        return
    written = 0
    for rank in paths.ranks:
        assert not isinstance(rank.installed, Exception), rank.installed
        buffer = rank.dispatch_output.expert_output
        if rank.installed_call is not None and buffer is not None:
            # The installed runner writes the expert output into combine's buffer, no copy.
            assert rank.installed_call["output"] is buffer
            assert rank.installed.hidden_states.data_ptr() == buffer.data_ptr()
            written += 1
    assert written, "no rank wrote into combine's buffer"
    # What SGLang does with the rows is its normal pre-permute's: the EPv1 format's verdicts.
    base = (a2a, quant, dispatch.replace("mori_v2", "mori_normal"))
    if _cpu_blocked(paths, key, base, "mori EPv2: "):
        return
    wrong = dispatch.endswith("_mxfp8") or (
        known_wrong(*base, ep_size=ep_size, hidden_pad=0) is not None
    )
    _compare(paths, key, ep_size, wrong=wrong, label="mori EPv2: ")


def test_epv2_dispatcher_is_read_as_the_mori_v2_formats() -> None:
    """`install` reads EPv2 from the dispatcher SGLang built (`_MoriEPv2DispatcherImplNormal`) and
    its wire from `dispatch_dtype`, as for EPv1 (whose impl gives the mori_normal* formats)."""
    if harness.RELEASE == "0.5.13":
        assert not hasattr(moriep, "_MoriEPv2DispatcherImplNormal")
        return
    for impl_cls, mode in (
        (moriep._MoriEPv2DispatcherImplNormal, "v2"),
        (moriep._MoriEPDispatcherImplNormal, "normal"),
    ):
        for dtype, suffix in (("bf16", ""), ("fp8", "_fp8"), ("fp4", "_fp4"), ("mxfp8", "_mxfp8")):
            impl = impl_cls.__new__(impl_cls)
            impl.dispatch_dtype = moriep.DispatchDtype[dtype]
            dispatcher = moriep.MoriEPDispatcher.__new__(moriep.MoriEPDispatcher)
            dispatcher._normal_dispatcher = impl
            formats = integration.dispatch_formats("mori", dispatcher)
            assert formats == (f"mori_{mode}{suffix}",)
            assert ("mori", "fp8_block", formats[0]) in generated.RUNNERS

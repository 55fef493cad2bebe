"""The quant methods of test_new_quant_methods.py (SGLang 0.5.23's new or changed AITER methods)
on every other (a2a, dispatch) the matrix serves them on: DeepEP's low-latency formats, Mooncake's
and NIXL's, MORI's low-latency, fp8, fp4, mxfp8 and per-token wires, and MORI EPv2. Each layer
goes through SGLang's own `apply` -> `MoeRunner.run`, natively and through `install(layer)`, and
each case is classified as test_moe_runner.py classifies the other methods (`verdict`):

- exact: SGLang's kernel call and combine input are the installed path's, bit for bit, and the
  installed output is the dense float64 MoE; negative controls on each comparison;
- dense: SGLang is wrong (the reason names 0.5.23's file:line); the installed output is the dense
  MoE, SGLang's path raises (asserted by message) or is not the dense MoE;
- CPU-blocked: SGLang upscales the wire with a ROCm Triton kernel (RuntimeError on a CPU); the
  installed output is the dense MoE;
- apply raises: SGLang's quant method fails before MoeRunner.run, and install refuses the layer
  with the reason;
- no SGLang wire: MORI's per-token fp8 wire exists in the matrix (vLLM's), not in SGLang's
  `DispatchDtype` (0.5.23 token_dispatcher/moriep.py:246-250): the layer installs with the format
  named, and the installed output is the dense MoE.

SGLang 0.5.13 runs only the per-tensor Fp8MoEMethod of these (the others skip, naming why, as in
test_new_quant_methods.py), on the formats it has (no MORI EPv2, no mxfp8 wire).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
import torch
from sglang.srt.layers.moe.token_dispatcher import moriep

import generated
from moe_runtime.integrations import sglang as integration
from tests.runners.harness import dense_mismatch
from tests.sglang import harness
from tests.sglang.conftest import COUNTS
from tests.sglang.test_new_quant_methods import (
    FORMATS,
    FP8_TENSOR,
    MXFP8,
    MXFP8_CLAMP,
    NEW,
    QUARK_W4A8,
    QUARK_W8A8,
    QUARK_W8A8_STATIC,
    Method,
    _case,
    _exact,
    _needs_new,
    sglang_on_rocm,  # noqa: F401 (the autouse fixture, for this module's tests too)
)
from tests.sglang.test_quant_methods import Case

METHODS = (MXFP8, MXFP8_CLAMP, FP8_TENSOR, QUARK_W8A8, QUARK_W8A8_STATIC, QUARK_W4A8)
EP_SIZES = (2, 4)
# Formats SGLang 0.5.13 does not have: MORI EPv2 (0.5.23 moriep.py:1355) and the mxfp8 wire (:250).
_NEWER_FORMATS = ("mori_v2", "_mxfp8")
CASES = [
    (method, a2a, dispatch, ep)
    for method in METHODS
    for a2a, quant, dispatch in sorted(generated.RUNNERS)
    if quant == method.quant
    and (a2a, dispatch) not in FORMATS  # test_new_quant_methods.py's own
    and (NEW or not any(part in dispatch for part in _NEWER_FORMATS))
    for ep in EP_SIZES
]
PER_1X32 = ("mxfp8", "quark_w4a8_mxfp4")  # the PER_1X32 weights (SGLang's `is_w4a4`)


@dataclasses.dataclass(frozen=True)
class Verdict:
    kind: str  # exact, dense, cpu blocked, apply raises, no sglang wire
    why: str  # SGLang 0.5.23's file:line (0.5.13's where it differs), or the refusal
    native: tuple[type[Exception], str] | None = None  # how SGLang's path raises, if it does


def _wire(dispatch: str) -> str:
    """The MORI wire of a format: bf16, fp8, fp4, mxfp8, fp8_token (others: their own name)."""
    parts = dispatch.split("_", 2)
    return parts[2] if dispatch.startswith("mori_") and len(parts) == 3 else "bf16"


def verdict(method: Method, a2a: str, dispatch: str) -> Verdict:
    """What SGLang's path does with `method` on (a2a, dispatch), from its source."""
    quant, wire = method.quant, _wire(dispatch)
    static = method in (QUARK_W8A8_STATIC, QUARK_W4A8)
    if a2a in ("mooncake", "nixl"):
        return Verdict(
            "apply raises",
            "the quant method's apply reads layer.dispatcher.expert_mask_gpu (fp8.py:3442, 3497; "
            "quark_w8a8_fp8_moe.py:305; quark_w4a8_mxfp4_moe.py:513), which the Mooncake and "
            "NIXL dispatchers do not define",
            (AttributeError, "expert_mask_gpu"),
        )
    if wire == "fp8_token":
        return Verdict("no sglang wire", "moriep.py:246-250: DispatchDtype has no per-token wire")
    if dispatch.startswith("deepep_ll"):
        return Verdict(
            "dense",
            "DeepEP's low-latency [L, C, H] slabs go through the normal pre-permute "
            "(moe_runner/aiter.py:545), which hands the kernel 3-D activations",
            (ValueError, r"hidden_states must be 2-D"),
        )
    if (quant in PER_1X32 and wire == "fp8") or (
        wire == "fp4" and (quant not in PER_1X32 or method.options.get("gemm1_clamp_limit"))
    ):
        return Verdict(
            "cpu blocked",
            "SGLang upscales the wire with a ROCm Triton kernel: fp8 rows for PER_1X32 weights "
            "(moe_runner/aiter.py:481-492), fp4 rows for per-token weights (:501-507) or under "
            "the clamp (:493-500)",
            (RuntimeError, "active drivers"),
        )
    if quant == "mxfp8" and wire == "fp4":
        return Verdict(
            "dense",
            "without the clamp SGLang hands the fp4 rows and their e8m0 scales as they are to "
            "the per_1x32 kernel of fp8 weights (moe_runner/aiter.py:481-507 upscales them only "
            "under the clamp; :397-400 keeps PER_1X32), whose input AITER quantizes to mxfp8 "
            "itself from bf16 (aiter/fused_moe.py e4048607a5:3074-3099): the reference refuses it",
            (ValueError, r"do not fit quant_type per_1x32 with fp8 \(mxfp8\) weights"),
        )
    if quant == "mxfp8" and wire == "mxfp8":
        return Verdict(
            "dense",
            "SGLang hands the wire's fp8 rows and e8m0 scales straight to per_1x32 "
            "(moe_runner/aiter.py:476-480), but AITER's mxfp8 path quantizes hidden_states itself "
            "and ignores a1_scale (aiter/fused_moe.py e4048607a5:3074-3099, a bf16/fp16-only "
            "quantizer), so the reference kernel refuses them; the installed runner upscales",
            (ValueError, "do not fit quant_type per_1x32"),
        )
    if quant == "fp8_channel":
        return Verdict(
            "dense",
            "Fp8MoEMethod passes its per-row scales as created, [E, N] (fp8.py:1765-1777, "
            "3472), where per_Token reads [L, N, 1]",
            (ValueError, r"w1_scale for per_Token must be \[\d+, 256, 1\]"),
        )
    if static:
        return Verdict(
            "dense",
            "the quant method hands its static per-tensor input scales to a per-token or "
            "per-group quantizer, which refuses them (quark_w8a8_fp8_moe.py:303-304, "
            "quark_w4a8_mxfp4_moe.py:509-510)",
            (ValueError, "refuse a static scale"),
        )
    if quant == "quark_w8a8_fp8" and wire in ("fp8", "mxfp8"):
        return Verdict(
            "dense",
            "per_Token weights keep their quant type on a pre-quantized wire "
            "(moe_runner/aiter.py:401-402), so the wire's [R, H/128] fp32 or [R, H/32] e8m0 "
            "scales are handed over as per-row a1_scale",
            (ValueError, r"a1_scale for pre-quantized per_Token input must be \[\d+, 1\]"),
        )
    return Verdict("exact", "")


def _native(layer: Any, output: Any) -> tuple[Any, dict[str, Any] | None]:
    """SGLang's apply: its combine input or the error it raised, and the kernel call it made
    (the fake AITER records the call before the reference kernel computes it)."""
    before = len(harness.aiter.CALLS)
    try:
        result = layer.quant_method.apply(layer, output)
    except Exception as error:  # SGLang's path fails in many ways where it is wrong
        result = error
    return result, harness.last_call() if len(harness.aiter.CALLS) > before else None


def _install(layer: Any, a2a: str, dispatch: str) -> integration.Installed:
    """install(layer), naming the format only where the dispatcher cannot tell it: Mooncake's and
    NIXL's keep no wire flag, and SGLang has no per-token fp8 wire."""
    if a2a in ("mooncake", "nixl") or dispatch.endswith("_fp8_token"):
        return integration.install(layer, dispatch=[dispatch])
    return integration.install(layer)


def _installed(case: Case, method: Method, a2a: str, dispatch: str) -> list[Any]:
    """Each rank's combine input through install(layer) and SGLang's own apply."""
    out = []
    for layer, output in zip(case.layers, case.outputs, strict=True):
        done = _install(layer, a2a, dispatch)
        assert done.keys == ((a2a, method.quant, dispatch),)
        out.append(layer.quant_method.apply(layer, output))
        assert integration.uninstall(layer)
    return out


def _installed_is_dense(case: Case, method: Method, a2a: str, dispatch: str) -> None:
    """The installed output against the dense MoE, with a zeroed rank as negative control."""
    installed = _installed(case, method, a2a, dispatch)
    for combine_input in installed:
        assert type(combine_input).__module__.startswith("sglang."), type(combine_input)
    out = harness.combined(case.dispatched, installed)
    assert dense_mismatch(out, case.expected, method.quant, dispatch) is None
    zeroed = list(installed)
    zeroed[0] = zeroed[0]._replace(hidden_states=torch.zeros_like(zeroed[0].hidden_states))
    if case.dispatched.outputs[0].hidden_states.numel():
        assert dense_mismatch(
            harness.combined(case.dispatched, zeroed), case.expected, method.quant, dispatch
        )


IDS = [f"{m.name}-{a}/{d}-ep{e}" for m, a, d, e in CASES]


@pytest.mark.parametrize(("method", "a2a", "dispatch", "ep_size"), CASES, ids=IDS)
def test_new_quant_method_on_every_format(
    method: Method, a2a: str, dispatch: str, ep_size: int
) -> None:
    _needs_new(method)
    found = verdict(method, a2a, dispatch)
    case = _case(method, a2a, dispatch, ep_size)
    label = f"new quant methods, other formats: {found.kind}"
    natives = [_native(layer, o) for layer, o in zip(case.layers, case.outputs, strict=True)]
    if found.native is not None:
        error_type, message = found.native
        for native, _ in natives:
            assert isinstance(native, error_type), (found.why, native)
            assert re.search(message, str(native)), (found.why, native)
    if found.kind == "apply raises":
        for layer in case.layers:
            with pytest.raises(integration.SGLangIntegrationError, match="expert_mask_gpu"):
                _install(layer, a2a, dispatch)
            assert integration.installed(layer) is None
    elif found.kind == "exact":
        _exact(case, method, (a2a, method.quant, dispatch))
        if dispatch.startswith("mori_v2"):
            _writes_into_combine_buffer(case)
    else:  # dense and CPU-blocked (SGLang's path raised, as asserted), no SGLang wire
        _installed_is_dense(case, method, a2a, dispatch)
    COUNTS[label] += 1


def _writes_into_combine_buffer(case: Case) -> None:
    """MORI EPv2: the installed runner's kernel call writes into the dispatch output's
    `expert_output` (combine's buffer), as SGLang's does (moe_runner/aiter.py:249-257)."""
    for layer, output in zip(case.layers, case.outputs, strict=True):
        integration.install(layer)
        ours = layer.quant_method.apply(layer, output)
        assert harness.last_call()["output"] is output.expert_output
        assert ours.hidden_states.data_ptr() == output.expert_output.data_ptr()
        assert integration.uninstall(layer)


def test_sglang_has_no_per_token_fp8_wire() -> None:
    """No MORI dispatcher SGLang builds gives a `*_fp8_token` format: its wires are
    DispatchDtype's (0.5.23 moriep.py:246-250; 0.5.13 has no mxfp8), and install reads each as
    one of the other formats; the per-token formats install only when named."""
    seen = set()
    for dtype in moriep.DispatchDtype:
        impl = moriep._MoriEPDispatcherImplNormal.__new__(moriep._MoriEPDispatcherImplNormal)
        impl.dispatch_dtype = dtype
        dispatcher = moriep.MoriEPDispatcher.__new__(moriep.MoriEPDispatcher)
        dispatcher._normal_dispatcher = impl
        seen.update(integration.dispatch_formats("mori", dispatcher))
    assert "mori_normal_fp8" in seen
    assert not any(fmt.endswith("_fp8_token") for fmt in seen), seen
    assert ("mori", "fp8_channel", "mori_normal_fp8_token") in generated.RUNNERS

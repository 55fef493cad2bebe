"""The kernel binding: the choice (pure), the import-time binding (subprocesses), and the AITER
binding against a fake `aiter` package (tests/runtime/fake_aiter) that records every call."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from moe_runtime import gate_up, kernels
from moe_runtime.enums import ActivationType, GateMode, QuantType
from moe_runtime.kernels import (
    KernelBindingError,
    accepts_keyword,
    aiter_binding,
    choose_binding,
    releases,
)
from moe_runtime.testing.recording import value_difference
from moe_runtime.types import ExpertWeights

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_AITER = Path(__file__).resolve().parent / "fake_aiter"
HINT = "pip install 'aiter-moe-runners[rocm]'"
L, H, N = 2, 64, 32  # local experts, hidden size, intermediate size (per partition)


# --- the choice, every branch -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "hip", "binding", "reason"),
    [
        ({"MOE_RUNTIME_KERNEL": "aiter"}, None, "aiter", "MOE_RUNTIME_KERNEL=aiter"),
        ({"MOE_RUNTIME_KERNEL": "reference"}, None, "reference", "MOE_RUNTIME_KERNEL=reference"),
        # The override wins over a ROCm build.
        ({"MOE_RUNTIME_KERNEL": "reference"}, "6.3.1", "reference", "MOE_RUNTIME_KERNEL=reference"),
        (
            {},
            "6.3.1",
            "aiter",
            "MOE_RUNTIME_KERNEL unset and torch is a ROCm build (torch 2.9.0+rocm6.3, HIP 6.3.1)",
        ),
        (
            {},
            None,
            "reference",
            "MOE_RUNTIME_KERNEL unset and torch is not a ROCm build (torch 2.9.0+rocm6.3)",
        ),
        # An empty value counts as unset.
        (
            {"MOE_RUNTIME_KERNEL": ""},
            None,
            "reference",
            "MOE_RUNTIME_KERNEL unset and torch is not a ROCm build (torch 2.9.0+rocm6.3)",
        ),
    ],
)
def test_choose_binding(env: dict[str, str], hip: str | None, binding: str, reason: str) -> None:
    assert choose_binding(env, hip, "2.9.0+rocm6.3") == (binding, reason)


@pytest.mark.parametrize("value", ["cuda", "AITER", "triton"])
def test_choose_binding_rejects_unknown_value(value: str) -> None:
    with pytest.raises(KernelBindingError) as raised:
        choose_binding({"MOE_RUNTIME_KERNEL": value}, None, "2.13.0")
    message = str(raised.value)
    assert f"MOE_RUNTIME_KERNEL={value!r} is not a kernel binding" in message
    assert "valid values: aiter, reference, or unset" in message


# --- the import-time binding, one fresh interpreter per case -----------------------------------

def _kernel_env(value: str | None, *paths: Path) -> dict[str, str]:
    """This environment with MOE_RUNTIME_KERNEL=`value` (None: unset) and PYTHONPATH `paths`, then
    the repository."""
    env = {k: v for k, v in os.environ.items() if k != "MOE_RUNTIME_KERNEL"}
    if value is not None:
        env["MOE_RUNTIME_KERNEL"] = value
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), str(REPO_ROOT)])
    return env


def _python(code: str, *argv: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """A fresh interpreter running `code` with `argv`, started now (they run side by side)."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _reports(processes: dict[str, subprocess.Popen[str]], timeout: int) -> dict[str, Any]:
    """Each interpreter's last line of output, as JSON; one that fails fails the test, naming its
    case and showing its stderr."""
    results = {}
    for case, process in processes.items():
        stdout, stderr = process.communicate(timeout=timeout)
        assert process.returncode == 0, f"{case}: {stderr}"
        results[case] = json.loads(stdout.strip().splitlines()[-1])
    return results


# Runs in a fresh interpreter: argv[1] = HIP version to pretend ("" for none), argv[2] = "block"
# to make `import aiter` fail whatever is installed. Prints one JSON line.
_DRIVER = """
import json, sys
import torch
if sys.argv[1]:
    torch.version.hip = sys.argv[1]
if sys.argv[2] == "block":
    sys.modules["aiter"] = None
try:
    import moe_runtime.kernels as k
except Exception as error:
    print(json.dumps({"error": type(error).__name__, "message": str(error)}))
else:
    from moe_runtime.types import ExpertWeights
    w = ExpertWeights(torch.zeros(1, 32, 32), torch.zeros(1, 32, 16))
    print(json.dumps({
        "binding": k.BINDING,
        "describe": k.describe(),
        "kernel_module": k.fused_moe.__module__,
        "quant_type": k.QuantType.__module__ + "." + k.QuantType.__qualname__,
        "activation_type": k.ActivationType.__module__ + "." + k.ActivationType.__qualname__,
        "prepare_is_identity": k.prepare_weights(w, k.QuantType.No) is w,
    }))
"""

# What describe() appends: the wire upscaler runners bind (moe_runtime.kernels.upscale).
UPSCALE = "; wire upscale: " + (
    "Triton (moe_runtime.kernels.triton_dequant) for CUDA/ROCm tensors, "
    "torch (moe_runtime.quant) for CPU tensors"
    if importlib.util.find_spec("triton") is not None
    else "torch (moe_runtime.quant) on every device: Triton is not installed"
)

# What describe() says between the binding and the upscaler: the optional fused_moe keywords the
# bound kernel takes (moe_runtime.kernels.keywords), declared by the reference, read from the
# fake's v0.1.7.post2 signature for AITER.
REFERENCE_KEYWORDS = (
    "; fused_moe keywords moe_sorting_dispatch_policy, swiglu_limit, gate_mode, beta, "
    "linear_beta, output; lacks no_combine, quant_dtype_a (declared by the reference)"
)
AITER_0_1_7_KEYWORDS = (
    "; fused_moe keywords moe_sorting_dispatch_policy; lacks swiglu_limit, gate_mode, beta, "
    "linear_beta, output, no_combine, quant_dtype_a (read from aiter.fused_moe's signature)"
)
# Then the per_1x32 activation rounding rule (moe_runtime.kernels.rounding): the reference's default
# (the newest), and the fake AITER's, from its version 0.1.7.post2 and its gfx950 fp8.
REFERENCE_ROUNDING = (
    "; per_1x32 activation rounding: AITER v0.1.16 rule (Swiglu separated bf16 below 256 rows "
    "else mxfp4; interleave bf16 below 256 rows else mxfp8; others mxfp4; mxfp4 scale round-up, "
    "mxfp8 scale round-up, gfx950)"
)
AITER_0_1_7_ROUNDING = (
    "; per_1x32 activation rounding: AITER v0.1.7.post2 rule (Swiglu bf16, others mxfp4; mxfp4 "
    "scale nearest, gfx950)"
)

# case -> (MOE_RUNTIME_KERNEL or None for unset, pretended HIP version, fake aiter on the path,
#          block any real aiter)
_CASES = {
    "unset": (None, "", False, True),
    "reference": ("reference", "", True, False),
    "aiter": ("aiter", "", True, False),
    "aiter_missing": ("aiter", "", False, True),
    "unknown": ("cuda", "", False, True),
    "rocm_unset": (None, "6.3.42131", True, False),
    "rocm_without_aiter": (None, "6.3.42131", False, True),
}


@pytest.fixture(scope="module")
def imported() -> dict[str, dict[str, Any]]:
    """Import `moe_runtime.kernels` under each case, all interpreters at once (torch's import
    dominates each), and collect what each one reports."""
    processes = {
        case: _python(
            _DRIVER,
            hip,
            "block" if block else "",
            env=_kernel_env(value, *([FAKE_AITER] if with_fake else [])),
        )
        for case, (value, hip, with_fake, block) in _CASES.items()
    }
    return _reports(processes, timeout=120)


# What an interpreter that bound a kernel reports, by binding, besides describe().
_BOUND = {
    "reference": {
        "binding": "reference",
        "kernel_module": "moe_runtime.kernels.reference",
        "quant_type": "moe_runtime.enums.QuantType",
        "activation_type": "moe_runtime.enums.ActivationType",
        "prepare_is_identity": True,
    },
    # AITER's own enum classes, not our mirrors.
    "aiter": {
        "binding": "aiter",
        "kernel_module": "aiter.fused_moe",
        "quant_type": "aiter.QuantType",
        "activation_type": "aiter.ActivationType",
        "prepare_is_identity": False,
    },
}
_REFERENCE_TAIL = f"{REFERENCE_KEYWORDS}{REFERENCE_ROUNDING}{UPSCALE}"
_AITER_TAIL = f"{AITER_0_1_7_KEYWORDS}{AITER_0_1_7_ROUNDING}{UPSCALE}"
_FAKE_AITER_FROM = f"aiter 0.1.7.post2+fake from {FAKE_AITER / 'aiter'}"


# case -> (the binding, what describe() says).
@pytest.mark.parametrize(
    ("case", "binding", "describe"),
    [
        (
            "unset",
            "reference",
            "reference: MOE_RUNTIME_KERNEL unset and torch is not a ROCm build "
            f"(torch {torch.__version__}){_REFERENCE_TAIL}",
        ),
        # The override ignores an importable AITER: its enums are ours, not AITER's.
        ("reference", "reference", f"reference: MOE_RUNTIME_KERNEL=reference{_REFERENCE_TAIL}"),
        ("aiter", "aiter", f"{_FAKE_AITER_FROM}: MOE_RUNTIME_KERNEL=aiter{_AITER_TAIL}"),
        (
            "rocm_unset",
            "aiter",
            f"{_FAKE_AITER_FROM}: MOE_RUNTIME_KERNEL unset and torch is a ROCm build "
            f"(torch {torch.__version__}, HIP 6.3.42131){_AITER_TAIL}",
        ),
    ],
    ids=["reference_off_rocm", "reference_override", "aiter_override", "aiter_on_rocm"],
)
def test_import_binds(
    case: str, binding: str, describe: str, imported: dict[str, dict[str, Any]]
) -> None:
    assert imported[case] == {**_BOUND[binding], "describe": describe}


def test_import_aiter_requested_but_missing_says_how_to_get_it(
    imported: dict[str, dict[str, Any]],
) -> None:
    result = imported["aiter_missing"]
    assert result["error"] == "KernelBindingError"
    message = result["message"]
    assert message.startswith("cannot bind AITER (MOE_RUNTIME_KERNEL=aiter): loading it failed")
    # The original import error, what to install, and the way out.
    assert "ModuleNotFoundError: import of aiter halted" in message
    assert HINT in message
    assert "amd-aiter" in message and "ROCm" in message
    assert "set MOE_RUNTIME_KERNEL=reference" in message


def test_import_rocm_without_aiter_is_an_error_not_a_fallback(
    imported: dict[str, dict[str, Any]],
) -> None:
    result = imported["rocm_without_aiter"]
    assert result["error"] == "KernelBindingError"
    assert "torch is a ROCm build" in result["message"]
    assert "HIP 6.3.42131" in result["message"]
    assert HINT in result["message"]


def test_import_unknown_value_names_the_valid_ones(imported: dict[str, dict[str, Any]]) -> None:
    result = imported["unknown"]
    assert result["error"] == "KernelBindingError"
    assert "MOE_RUNTIME_KERNEL='cuda' is not a kernel binding" in result["message"]
    assert "valid values: aiter, reference" in result["message"]


# --- the AITER binding against the fake --------------------------------------------------------


def _forget_aiter() -> None:
    for name in [name for name in sys.modules if name == "aiter" or name.startswith("aiter.")]:
        del sys.modules[name]


@pytest.fixture
def fake_aiter(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The fake `aiter`, importable for one test, with an empty call log."""
    _forget_aiter()
    monkeypatch.syspath_prepend(str(FAKE_AITER))
    import aiter

    aiter.CALLS.clear()
    try:
        yield aiter
    finally:
        _forget_aiter()


def test_aiter_is_imported_only_by_load(fake_aiter: ModuleType) -> None:
    _forget_aiter()
    assert "aiter" not in sys.modules  # importing the binding module imported nothing
    binding = aiter_binding.load()
    import aiter
    import aiter.fused_moe
    import aiter.utility.fp4_utils

    assert aiter.__file__ == str(FAKE_AITER / "aiter" / "__init__.py")
    assert binding.fused_moe is aiter.fused_moe.fused_moe
    assert binding.quant_type is aiter.QuantType
    assert binding.activation_type is aiter.ActivationType
    assert binding.version == "0.1.7.post2+fake"
    assert binding.origin == str(FAKE_AITER / "aiter")
    for module in ("aiter.ops.shuffle", "aiter.int4_utils", "aiter.utility.fp4_utils"):
        assert sys.modules[module].__file__.startswith(str(FAKE_AITER))  # type: ignore[union-attr]


def _bf16(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).to(torch.bfloat16)


def _fp8(*shape: int) -> torch.Tensor:
    return (torch.randn(*shape) * 8).to(torch.float8_e4m3fn)


def _int4(*shape: int) -> torch.Tensor:
    return torch.randint(-7, 8, shape, dtype=torch.int8)


def _fp4(*shape: int) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)


def _e8m0(*shape: int) -> torch.Tensor:
    return torch.randint(100, 140, shape, dtype=torch.uint8).view(torch.float8_e8m0fnu)


def _same(a: object, b: torch.Tensor) -> bool:
    """A tensor of b's dtype and shape with b's bytes (the one comparison of recorded values)."""
    return value_difference("argument", a, b) is None


_SHUFFLED_TYPES: dict[str, tuple[QuantType, Callable[[], ExpertWeights]]] = {
    "unquant": (QuantType.No, lambda: ExpertWeights(_bf16(L, 2 * N, H), _bf16(L, H, N))),
    "per_tensor": (
        QuantType.per_Tensor,
        lambda: ExpertWeights(_fp8(L, 2 * N, H), _fp8(L, H, N), torch.rand(L, 1), torch.rand(L, 1)),
    ),
    "fp8_channel": (
        QuantType.per_Token,
        lambda: ExpertWeights(
            _fp8(L, 2 * N, H), _fp8(L, H, N), torch.rand(L, 2 * N, 1), torch.rand(L, H, 1)
        ),
    ),
    "fp8_block": (
        QuantType.per_128x128,
        lambda: ExpertWeights(
            _fp8(L, 256, 128), _fp8(L, 128, 128), torch.rand(L, 2, 1), torch.rand(L, 1, 1)
        ),
    ),
    "per_1x128": (
        QuantType.per_1x128,
        lambda: ExpertWeights(
            _fp8(L, 256, 128), _fp8(L, 128, 128), torch.rand(L, 2, 1), torch.rand(L, 1, 1)
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(_SHUFFLED_TYPES))
def test_prepare_shuffles_weights_16x16(fake_aiter: ModuleType, case: str) -> None:
    quant_type, build = _SHUFFLED_TYPES[case]
    weights = build()
    prepared = aiter_binding.load().prepare(weights, quant_type, ActivationType.Silu)

    calls = fake_aiter.CALLS
    assert [call.name for call in calls] == ["shuffle_weight", "shuffle_weight"]
    for call, logical in zip(calls, (weights.w13_weight, weights.w2_weight), strict=True):
        assert _same(call.args[0], logical)
        assert call.args[1:] == ((16, 16),)
        assert call.kwargs == {"use_int4": False}
    assert prepared.w13_weight is calls[0].result
    assert prepared.w2_weight is calls[1].result
    # fp32 scales go to the kernel as they are.
    assert prepared.w13_scale is weights.w13_scale
    assert prepared.w2_scale is weights.w2_scale


def test_prepare_accepts_aiters_own_enum_members(fake_aiter: ModuleType) -> None:
    weights = ExpertWeights(_int4(L, 2 * N, H), _int4(L, H, N))
    prepare = aiter_binding.load().prepare
    prepare(weights, fake_aiter.QuantType.per_Token, fake_aiter.ActivationType.Silu)
    # per_Token with int8 weights took the int4 path, so the fake's member was understood.
    assert fake_aiter.CALLS[0].kwargs == {"use_int4": True}


def test_prepare_int4_shuffles_then_packs_eight_per_uint32(fake_aiter: ModuleType) -> None:
    weights = ExpertWeights(
        _int4(L, 2 * N, H), _int4(L, H, N), torch.rand(L, 2 * N, 1), torch.rand(L, H, 1)
    )
    prepared = aiter_binding.load().prepare(weights, QuantType.per_Token, ActivationType.Silu)

    calls = fake_aiter.CALLS
    steps = ["shuffle_weight", "convert_int8_to_uint32_int4", "rearrange_4bit_elements"]
    assert [call.name for call in calls] == steps * 2
    for first, logical in ((0, weights.w13_weight), (3, weights.w2_weight)):
        shuffle, convert, rearrange = calls[first : first + 3]
        assert _same(shuffle.args[0], logical)
        assert shuffle.args[1:] == ((16, 16),)
        assert shuffle.kwargs == {"use_int4": True}
        # Each step takes the previous step's output.
        assert convert.args == (shuffle.result,)
        assert rearrange.args == (convert.result,)
    assert prepared.w13_weight is calls[2].result
    assert prepared.w2_weight is calls[5].result
    assert prepared.w13_weight.dtype == torch.uint32
    assert prepared.w13_scale is weights.w13_scale


def test_prepare_int4_refuses_real_int8_weights(fake_aiter: ModuleType) -> None:
    w2 = torch.full((L, H, N), -7, dtype=torch.int8)
    w2[1, 3, 5] = 100
    weights = ExpertWeights(_int4(L, 2 * N, H), w2)
    message = r"w2_weight holds values in \[-7, 100\], outside \[-8, 7\]"
    with pytest.raises(ValueError, match=message):
        aiter_binding.load().prepare(weights, QuantType.per_Token, ActivationType.Silu)
    assert fake_aiter.CALLS == []


def _mxfp4_weights() -> ExpertWeights:
    return ExpertWeights(
        _fp4(L, 2 * N, H // 2),
        _fp4(L, H, N // 2),
        _e8m0(L, 2 * N, H // 32),
        _e8m0(L, H, N // 32),
        b13=torch.randn(L, 2 * N),
        b2=torch.randn(L, H),
    )


@pytest.mark.parametrize("activation", [ActivationType.Silu, ActivationType.Gelu])
def test_prepare_a4w4_shuffles_weights_and_e8m0_scales(
    fake_aiter: ModuleType, activation: ActivationType
) -> None:
    weights = _mxfp4_weights()
    prepared = aiter_binding.load().prepare(weights, QuantType.per_1x32, activation)

    calls = fake_aiter.CALLS
    assert sorted(call.name for call in calls) == ["e8m0_shuffle"] * 2 + ["shuffle_weight"] * 2
    w13_call, w2_call = [call for call in calls if call.name == "shuffle_weight"]
    assert _same(w13_call.args[0], weights.w13_weight) and w13_call.args[1:] == ((16, 16),)
    assert _same(w2_call.args[0], weights.w2_weight) and w2_call.args[1:] == ((16, 16),)
    s13_call, s2_call = [call for call in calls if call.name == "e8m0_shuffle"]
    # Scales are shuffled as [experts * rows, K/32] matrices.
    assert _same(s13_call.args[0], weights.w13_scale.reshape(L * 2 * N, H // 32))  # type: ignore[union-attr]
    assert _same(s2_call.args[0], weights.w2_scale.reshape(L * H, N // 32))  # type: ignore[union-attr]
    assert prepared.w13_weight is w13_call.result and prepared.w2_weight is w2_call.result
    assert prepared.w13_scale is s13_call.result and prepared.w2_scale is s2_call.result


def _assert_a16w4_shuffles(calls: list[Any], weights: ExpertWeights) -> None:
    """The a16w4 layout's calls: w13 and w2 through shuffle_weight_a16w4, gate_up=True
    interleaving gate and up tiles of w13 only; then w13's scales (through shuffle_scale_a16w4)
    and w2's, each shuffled as an [experts * rows, K/32] matrix."""
    w13_call, w2_call, s13_call, s2_call = calls
    assert _same(w13_call.args[0], weights.w13_weight) and w13_call.args[1:] == (16, True)
    assert _same(w2_call.args[0], weights.w2_weight) and w2_call.args[1:] == (16, False)
    assert _same(s13_call.args[0], weights.w13_scale.reshape(L * 2 * N, H // 32))  # type: ignore[union-attr]
    assert s13_call.args[1:] == (L, True)
    assert _same(s2_call.args[0], weights.w2_scale.reshape(L * H, N // 32))  # type: ignore[union-attr]


def test_prepare_a16w4_for_swiglu_uses_the_cktile_layout(fake_aiter: ModuleType) -> None:
    weights = _mxfp4_weights()
    prepared = aiter_binding.load().prepare(weights, QuantType.per_1x32, ActivationType.Swiglu)

    calls = fake_aiter.CALLS
    assert [call.name for call in calls] == ["shuffle_weight_a16w4"] * 2 + [
        "shuffle_scale_a16w4"
    ] * 2
    _assert_a16w4_shuffles(calls, weights)
    w13_call, w2_call, s13_call, s2_call = calls
    assert s2_call.args[1:] == (L, False)
    assert prepared.w13_weight is w13_call.result and prepared.w2_weight is w2_call.result
    assert prepared.w13_scale is s13_call.result and prepared.w2_scale is s2_call.result
    assert prepared.b13 is weights.b13 and prepared.b2 is weights.b2


def _mxfp8_weights() -> ExpertWeights:
    return ExpertWeights(
        _fp8(L, 2 * N, H), _fp8(L, H, N), _e8m0(L, 2 * N, H // 32), _e8m0(L, H, N // 32)
    )


@pytest.mark.parametrize("given", [GateMode.SEPARATED, GateMode.INTERLEAVE])
def test_prepare_mxfp8_uses_sglangs_a8w8_layout(
    fake_aiter: ModuleType, monkeypatch: pytest.MonkeyPatch, given: GateMode
) -> None:
    """SGLang 0.5.23 (fp8.py:2586-2608): the a16w4 shuffles of both weights and of w13's scales,
    but e8m0_shuffle of w2's scales; the kernel is told INTERLEAVE."""
    import aiter.fused_moe as fake_module

    monkeypatch.setattr(fake_module, "fused_moe", fake_module.fused_moe_v0_1_14)
    monkeypatch.setattr(fake_aiter, "__version__", "0.1.16.post1")
    weights = _mxfp8_weights()
    logical = gate_up.interleaved(weights) if given == GateMode.INTERLEAVE else weights
    prepared = aiter_binding.load().prepare(logical, QuantType.per_1x32, ActivationType.Swiglu)

    calls = fake_aiter.CALLS
    assert [call.name for call in calls] == [
        "shuffle_weight_a16w4", "shuffle_weight_a16w4", "shuffle_scale_a16w4", "e8m0_shuffle"
    ]  # fmt: skip
    _assert_a16w4_shuffles(calls, weights)
    _, _, s13_call, s2_call = calls
    assert prepared.w2_scale is s2_call.result and prepared.w13_scale is s13_call.result
    assert prepared.gate_mode == GateMode.INTERLEAVE


@pytest.mark.parametrize(
    "where", ["without gate_mode", "gfx942", "v0.1.14", "v0.1.16", "v0.1.16, rocm build"]
)
def test_prepare_mxfp8_is_refused_where_aiter_has_no_mxfp8_kernels(
    fake_aiter: ModuleType, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """fp8 per_1x32 kernels first appear at v0.1.16.post1 (fused_moe.py:408-410), on gfx950."""
    import aiter.fused_moe as fake_module

    version = {"v0.1.14": "0.1.14", "v0.1.16": "0.1.16", "v0.1.16, rocm build": "0.1.16+rocm7.1"}
    if where != "without gate_mode":
        monkeypatch.setattr(fake_module, "fused_moe", fake_module.fused_moe_v0_1_14)
    monkeypatch.setattr(fake_aiter, "__version__", version.get(where, "0.1.16.post1"))
    if where == "gfx942":
        monkeypatch.setattr(fake_aiter.dtypes, "fp8", torch.float8_e4m3fnuz)
    with pytest.raises(
        ValueError, match=r"mxfp8 weights .* need AITER v0\.1\.16\.post1 or later on gfx950"
    ):
        aiter_binding.load().prepare(_mxfp8_weights(), QuantType.per_1x32, ActivationType.Swiglu)
    assert fake_aiter.CALLS == []
    # Control: mxfp4 weights on the same AITER are prepared.
    aiter_binding.load().prepare(_mxfp4_weights(), QuantType.per_1x32, ActivationType.Swiglu)
    assert fake_aiter.CALLS


@pytest.mark.parametrize("version", ["0.1.16.post1", "0.1.20.post1+rocm7.1", "(unknown version)"])
def test_prepare_mxfp8_from_v0_1_16_post1(
    fake_aiter: ModuleType, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    """Control of the refusals above: the first release with the kernels, a later ROCm build,
    and a source build that names no release (its gate_mode keyword is the evidence)."""
    import aiter.fused_moe as fake_module

    monkeypatch.setattr(fake_module, "fused_moe", fake_module.fused_moe_v0_1_14)
    monkeypatch.setattr(fake_aiter, "__version__", version)
    prepared = aiter_binding.load().prepare(
        _mxfp8_weights(), QuantType.per_1x32, ActivationType.Swiglu
    )
    assert prepared.gate_mode == GateMode.INTERLEAVE


@pytest.mark.parametrize(
    ("version", "release"),
    [
        ("0.1.16", (0, 1, 16, 0)),
        ("0.1.16.post1", (0, 1, 16, 1)),
        ("v0.1.7.post2", (0, 1, 7, 2)),
        ("0.1.20.post1+rocm7.1", (0, 1, 20, 1)),
        ("0.1.14rc0", (0, 1, 14, 0)),
        ("(unknown version)", None),
        ("main", None),
    ],
)
def test_release_of_reads_post_releases(version: str, release: tuple[int, ...] | None) -> None:
    assert releases.release_of(version) == release


def test_post_releases_order_after_their_release() -> None:
    assert releases.release_of("0.1.16") < releases.release_of("0.1.16.post1")  # type: ignore[operator]
    assert releases.release_of("0.1.16.post6") < releases.release_of("0.1.17")  # type: ignore[operator]
    assert releases.tag((0, 1, 16, 1)) == "v0.1.16.post1"
    assert releases.tag((0, 1, 14, 0)) == "v0.1.14"


def test_prepare_per_1x32_needs_scales(fake_aiter: ModuleType) -> None:
    weights = ExpertWeights(_fp4(L, 2 * N, H // 2), _fp4(L, H, N // 2))
    with pytest.raises(ValueError, match=r"per_1x32 weights need w13_scale"):
        aiter_binding.load().prepare(weights, QuantType.per_1x32, ActivationType.Silu)


def test_public_prepare_weights_needs_activation_for_per_1x32() -> None:
    with pytest.raises(ValueError, match=r"per_1x32\) needs activation=.*Swiglu \(a16w4"):
        kernels.prepare_weights(_mxfp4_weights(), kernels.QuantType.per_1x32)


# Finite e4m3fn values, plus -0 (bits 0x80), which is NaN in e4m3fnuz.
_FP8_VALUES = [1.0, -2.0, 0.5, -0.0, 448.0, -0.015625, 3.5, 0.0]


def _fp8_weights(rows: int, cols: int) -> torch.Tensor:
    values = torch.tensor(_FP8_VALUES).repeat(L * rows * cols // len(_FP8_VALUES))
    return values.view(L, rows, cols).to(torch.float8_e4m3fn)


def test_prepare_reencodes_e4m3fn_as_e4m3fnuz_on_gfx942(
    fake_aiter: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_aiter.dtypes, "fp8", torch.float8_e4m3fnuz)  # gfx942
    weights = ExpertWeights(
        _fp8_weights(2 * N, H),
        _fp8_weights(H, N),
        torch.tensor([[0.25], [4.0]]),
        torch.tensor([[0.5], [8.0]]),
        a13_scale=torch.tensor([0.125]),
        a2_scale=torch.tensor([2.0]),
    )
    prepared = aiter_binding.load().prepare(weights, QuantType.per_Tensor, ActivationType.Silu)

    w13_in = fake_aiter.CALLS[0].args[0]
    w2_in = fake_aiter.CALLS[1].args[0]
    assert w13_in.dtype == torch.float8_e4m3fnuz and w2_in.dtype == torch.float8_e4m3fnuz
    # Same bits, except -0 (0x80, NaN in e4m3fnuz) became +0.
    bits = weights.w13_weight.view(torch.uint8)
    assert torch.equal(w13_in.view(torch.uint8), torch.where(bits == 0x80, 0, bits))
    assert not torch.isnan(w13_in.float()).any()
    # Every value halves and every scale doubles: the dequantized weights are unchanged.
    expected = torch.tensor(_FP8_VALUES, dtype=torch.float64).repeat(
        L * 2 * N * H // len(_FP8_VALUES)
    ).view(L, 2 * N, H) * torch.tensor([[[0.25]], [[4.0]]], dtype=torch.float64)
    assert prepared.w13_scale is not None and prepared.w2_scale is not None
    got = w13_in.double() * prepared.w13_scale.double().view(L, 1, 1)
    assert torch.equal(got, expected)
    assert torch.equal(prepared.w2_scale, torch.tensor([[1.0], [16.0]]))
    assert torch.equal(prepared.a13_scale, torch.tensor([0.25]))  # type: ignore[arg-type]
    assert torch.equal(prepared.a2_scale, torch.tensor([4.0]))  # type: ignore[arg-type]


def test_prepare_keeps_e4m3fn_where_aiter_computes_in_e4m3fn(fake_aiter: ModuleType) -> None:
    weights = ExpertWeights(
        _fp8_weights(2 * N, H), _fp8_weights(H, N), torch.rand(L, 1), torch.rand(L, 1)
    )
    prepared = aiter_binding.load().prepare(weights, QuantType.per_Tensor, ActivationType.Silu)
    assert _same(fake_aiter.CALLS[0].args[0], weights.w13_weight)
    assert prepared.w13_scale is weights.w13_scale


# --- signature inspection -----------------------------------------------------------------------


def test_accepts_keyword_follows_the_installed_signature(
    fake_aiter: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiter.fused_moe as fake_module

    old = aiter_binding.load().fused_moe
    assert not accepts_keyword(old, "swiglu_limit")
    assert accepts_keyword(old, "bias2") and accepts_keyword(old, "expert_mask")

    monkeypatch.setattr(fake_module, "fused_moe", fake_module.fused_moe_with_swiglu_limit)
    new = aiter_binding.load().fused_moe
    assert accepts_keyword(new, "swiglu_limit")
    assert not accepts_keyword(new, "gate_mode")


def _kwargs_only(**kwargs: object) -> None: ...


def _positional_only(swiglu_limit: float, /) -> None: ...


def _with_limit(x: int, *, swiglu_limit: float = 0.0) -> None: ...


class _CallableKernel:
    def __call__(self, hidden_states: torch.Tensor, *, swiglu_limit: float = 0.0) -> None: ...


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [
        (_with_limit, True),
        (functools.partial(_with_limit, 1), True),
        (_CallableKernel(), True),
        (_kwargs_only, False),  # **kwargs swallows anything: no evidence of the keyword
        (_positional_only, False),  # cannot be passed by name
        (max, False),  # a builtin without an inspectable signature
        (object(), False),  # not callable at all
    ],
)
def test_accepts_keyword(kernel: object, expected: bool) -> None:
    assert accepts_keyword(kernel, "swiglu_limit") is expected


# --- optional keywords, read once at bind time --------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "accepted"),
    [
        ("fused_moe", {"moe_sorting_dispatch_policy"}),  # v0.1.7.post2
        ("fused_moe_v0_1_14", {"moe_sorting_dispatch_policy", "swiglu_limit", "gate_mode"}),
        (
            "fused_moe_v0_1_20",
            {"moe_sorting_dispatch_policy", "swiglu_limit", "gate_mode", "beta", "linear_beta"},
        ),
    ],
)
def test_binding_reads_the_keywords_from_the_installed_signature(
    fake_aiter: ModuleType, monkeypatch: pytest.MonkeyPatch, variant: str, accepted: set[str]
) -> None:
    import aiter.fused_moe as fake_module

    monkeypatch.setattr(fake_module, "fused_moe", getattr(fake_module, variant))
    binding = aiter_binding.load()
    assert binding.keywords.accepted == accepted
    assert binding.keywords.source == "read from aiter.fused_moe's signature"


def test_reference_declares_exactly_the_keywords_its_signature_has() -> None:
    from moe_runtime.kernels import keywords, reference

    for kernel in (reference.fused_moe, reference.fused_moe_graph_safe):
        assert keywords.of_signature(kernel, "").accepted == reference.KEYWORDS
    assert kernels.BINDING == "reference" and kernels.KEYWORDS.accepted == reference.KEYWORDS
    assert kernels.keywords_of(kernels.fused_moe) is kernels.KEYWORDS


def test_describe_lists_taken_and_lacking_keywords_in_release_order() -> None:
    from moe_runtime.kernels import keywords

    text = keywords.KernelKeywords(frozenset({"gate_mode", "swiglu_limit"}), "a source").describe()
    assert text == (
        "fused_moe keywords swiglu_limit, gate_mode; lacks moe_sorting_dispatch_policy, beta, "
        "linear_beta, output, no_combine, quant_dtype_a (a source)"
    )
    assert keywords.KernelKeywords(frozenset(keywords.ADDED_IN), "s").describe() == (
        "fused_moe keywords " + ", ".join(keywords.ADDED_IN) + " (s)"
    )
    with pytest.raises(ValueError, match="unknown fused_moe keywords"):
        keywords.declared(frozenset({"gate_mod"}), "typo")


@pytest.mark.parametrize(
    ("name", "release"),
    [("swiglu_limit", "v0.1.14"), ("gate_mode", "v0.1.14"), ("beta", "v0.1.19"),
     ("output", "a release after v0.1.20.post1")],
)  # fmt: skip
def test_a_missing_keyword_is_refused_with_the_release_that_added_it(
    name: str, release: str
) -> None:
    from moe_runtime.kernels import keywords
    from moe_runtime.types import ConfigError

    old = keywords.KernelKeywords(frozenset({"moe_sorting_dispatch_policy"}), "old")
    with pytest.raises(ConfigError) as raised:
        old.require(name, "this layer", "aiter 0.1.7.post2")
    assert str(raised.value) == (
        f"this layer needs a kernel with a `{name}` keyword (AITER's fused_moe has it from "
        f"{release}); the bound kernel (aiter 0.1.7.post2) has none"
    )
    keywords.KernelKeywords(frozenset({name}), "new").require(name, "this layer", "new")


# --- gate modes in the AITER weight preparation -------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "mode"),
    [("fused_moe", GateMode.SEPARATED), ("fused_moe_v0_1_14", GateMode.INTERLEAVE)],
)
@pytest.mark.parametrize("given", [GateMode.SEPARATED, GateMode.INTERLEAVE])
def test_a16w4_weights_say_interleave_where_fused_moe_takes_gate_mode(
    fake_aiter: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    variant: str,
    mode: GateMode,
    given: GateMode,
) -> None:
    """shuffle_weight_a16w4(gate_up=True) is AITER's interleaved layout (SGLang 0.5.23 passes
    GateMode.INTERLEAVE with it); before v0.1.14 there is no keyword and the kernel knows only
    that layout. Interleaved logical rows are separated before the shuffle, so both inputs
    give the same shuffle input."""
    import aiter.fused_moe as fake_module

    monkeypatch.setattr(fake_module, "fused_moe", getattr(fake_module, variant))
    weights = _mxfp4_weights()
    logical = gate_up.interleaved(weights) if given == GateMode.INTERLEAVE else weights
    prepared = aiter_binding.load().prepare(logical, QuantType.per_1x32, ActivationType.Swiglu)

    assert prepared.gate_mode == mode
    w13_call, _, s13_call, _ = fake_aiter.CALLS
    assert _same(w13_call.args[0], weights.w13_weight) and w13_call.args[1:] == (16, True)
    assert _same(s13_call.args[0], weights.w13_scale.reshape(L * 2 * N, H // 32))  # type: ignore[union-attr]
    assert torch.equal(prepared.b13, weights.b13)  # type: ignore[arg-type]


@pytest.mark.parametrize("activation", [ActivationType.Silu, ActivationType.Gelu])
def test_a4w4_and_other_layouts_stay_separated(
    fake_aiter: ModuleType, monkeypatch: pytest.MonkeyPatch, activation: ActivationType
) -> None:
    import aiter.fused_moe as fake_module

    monkeypatch.setattr(fake_module, "fused_moe", fake_module.fused_moe_v0_1_20)
    weights = _mxfp4_weights()
    prepared = aiter_binding.load().prepare(
        gate_up.interleaved(weights), QuantType.per_1x32, activation
    )
    assert prepared.gate_mode == GateMode.SEPARATED
    w13_call = next(call for call in fake_aiter.CALLS if call.name == "shuffle_weight")
    assert _same(w13_call.args[0], weights.w13_weight)


# --- a runner on the AITER binding, per installed signature (fresh interpreters) ---------------

# argv[1]: the fake fused_moe to install (a name in aiter/fused_moe.py), argv[2]: swiglu_limit.
# Builds the none/mxfp4/standard runner with the bound kernel and calls it once.
_RUNNER_DRIVER = """
import json, sys
import aiter, aiter.fused_moe as fake
fake.fused_moe = getattr(fake, sys.argv[1])
import generated
from moe_runtime import types as t
from moe_runtime.testing import emulate
from moe_runtime.testing.weights import make_expert_weights
config = t.MoeLayerConfig(num_experts=4, num_local_experts=4, ep_rank=0, ep_size=1, top_k=2,
    hidden_size=64, intermediate_size=32, activation="swiglu", swiglu_limit=float(sys.argv[2]))
weights = make_expert_weights("mxfp4", 4, 64, 32, seed=0)
try:
    runner = generated.select("none", "mxfp4", "standard")(config, weights)
except Exception as error:
    print(json.dumps({"error": type(error).__name__, "message": str(error)}))
    raise SystemExit
batch = emulate.make_batch(3, 64, 4, 2, ep_size=1, seed=1)
runner(emulate.dispatch(batch, "standard").outputs[0])
call = [c for c in aiter.CALLS if c.name == "fused_moe"][-1]
print(json.dumps({k: v for k, v in call.kwargs.items() if k in ("gate_mode", "swiglu_limit")}))
"""

_RUNNER_CASES = {
    "v0.1.7.post2": ("fused_moe", "0"),
    "v0.1.7.post2_limit": ("fused_moe", "7.0"),
    "v0.1.14": ("fused_moe_v0_1_14", "0"),
    "v0.1.14_limit": ("fused_moe_v0_1_14", "7.0"),
}


@pytest.fixture(scope="module")
def runner_calls() -> dict[str, dict[str, Any]]:
    env = _kernel_env("aiter", FAKE_AITER)
    processes = {
        case: _python(_RUNNER_DRIVER, *argv, env=env) for case, argv in _RUNNER_CASES.items()
    }
    return _reports(processes, timeout=180)


def test_mxfp4_runner_passes_gate_mode_interleave_to_aiter_from_v0_1_14(
    runner_calls: dict[str, dict[str, Any]],
) -> None:
    # Before v0.1.14 there is no keyword: the a16w4 kernel reads only the layout it gets.
    assert runner_calls["v0.1.7.post2"] == {}
    # From v0.1.14 the default is SEPARATED, which is not the a16w4 shuffle's layout.
    assert runner_calls["v0.1.14"] == {"gate_mode": "interleave", "swiglu_limit": 0.0}
    assert runner_calls["v0.1.14_limit"] == {"gate_mode": "interleave", "swiglu_limit": 7.0}


def test_runner_needing_swiglu_limit_is_refused_at_load_on_aiter_before_v0_1_14(
    runner_calls: dict[str, dict[str, Any]],
) -> None:
    result = runner_calls["v0.1.7.post2_limit"]
    assert result["error"] == "ConfigError"
    assert result["message"].startswith(
        "swiglu_limit=7.0 needs a kernel with a `swiglu_limit` keyword (AITER's fused_moe has it "
        "from v0.1.14); the bound kernel (aiter 0.1.7.post2+fake"
    )

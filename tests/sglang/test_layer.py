"""SGLang's own quant methods (`Fp8MoEMethod`, `UnquantizedFusedMoEMethod`): `create_moe_runner`,
then `apply(layer, dispatch_output)` -> `MoeRunner.run`, natively and after `install(layer)`.

`FusedMoE.__init__` needs SGLang's expert-parallel process groups (0.5.13) or its published
parallel config (0.5.23), so the layer is a `torch.nn.Module` with the attributes these methods
read. On a CPU, SGLang's modules see no HIP: their `_is_hip` / `_use_aiter` flags are set as on
ROCm with SGLANG_USE_AITER=1, the runner backend as `--moe-runner-backend aiter` sets it, and the
unquantized method's platform dispatch to `forward_cuda`, as on ROCm.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from sglang.srt.layers.moe import utils as moe_utils
from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE
from sglang.srt.layers.moe.token_dispatcher import deepep, mooncake, moriep, nixl
from sglang.srt.layers.quantization import fp8, unquant

import generated
from moe_runtime import types as t
from moe_runtime.integrations import sglang as integration
from moe_runtime.testing import emulate
from moe_runtime.testing.dynamic import known_wrong
from moe_runtime.testing.weights import make_expert_weights, slice_experts
from tests.sglang import compare, harness, paths
from tests.sglang.conftest import COUNTS
from tests.sglang.paths import HIDDEN, INTERMEDIATE, NUM_EXPERTS, TOKENS, TOP_K

METHODS = ("unquant", "fp8_block", "fp8_channel")
# (a2a, dispatch) pairs of the dispatchers whose attributes _dispatcher sets.
FORMATS = (
    ("none", "standard"),
    ("deepep", "deepep_normal"),
    ("mori", "mori_normal"),
    ("mori", "mori_ll"),
    ("mori", "mori_normal_fp8"),
)


@pytest.fixture(autouse=True)
def sglang_on_rocm(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for module in (fp8, unquant):
        monkeypatch.setattr(module, "_is_hip", True)
        monkeypatch.setattr(module, "_use_aiter", True)
    harness.set_runner_backend(monkeypatch, moe_utils.MoeRunnerBackend.AITER)
    yield
    harness.set_a2a_backend("none")


class Layer(FusedMoE):
    """A FusedMoE (so `install_all` finds it) whose __init__ only sets the attributes SGLang's
    quant methods read, with AITER-processed weights: FusedMoE.__init__ needs process groups."""

    def __init__(self, quant: str, config: t.MoeLayerConfig, weights: t.ExpertWeights) -> None:
        torch.nn.Module.__init__(self)
        paths.set_layer_placement(self, 7, config)
        self.w13_weight = torch.nn.Parameter(weights.w13_weight, requires_grad=False)
        self.w2_weight = torch.nn.Parameter(weights.w2_weight, requires_grad=False)
        if quant == "fp8_block":
            self.w13_weight_scale_inv = weights.w13_scale
            self.w2_weight_scale_inv = weights.w2_scale
            method: Any = fp8.Fp8MoEMethod(
                fp8.Fp8Config(is_checkpoint_fp8_serialized=True, weight_block_size=[128, 128])
            )
        elif quant == "fp8_channel":
            # AITER's per-token path reads the per-channel scales as *_scale1 [L, N, 1].
            self.w13_weight_scale1 = weights.w13_scale
            self.w2_weight_scale1 = weights.w2_scale
            method = fp8.Fp8MoEMethod(fp8.Fp8Config(is_checkpoint_fp8_serialized=True))
        else:
            method = unquant.UnquantizedFusedMoEMethod()
            # Off ROCm SGLang's op dispatch picks forward_native; on ROCm it resolves to
            # forward_cuda (0.5.13's forward_hip calls it; 0.5.23 falls back to it).
            method._forward_method = method.forward_cuda
        self.quant_method = method
        self.moe_runner_config = harness.runner_config(config)
        method.create_moe_runner(self, self.moe_runner_config)


def _dispatcher(a2a: str, dispatch: str, config: t.MoeLayerConfig) -> Any:
    """SGLang's own dispatcher class, not constructed (that needs DeepEP/MORI and process
    groups): the attributes `install` and the quant methods read are set as its __init__ does.
    Mooncake's and NIXL's keep no expert mask and no wire flag (their install names the format)."""
    mask = harness.Dispatcher(a2a, config)
    if a2a == "none":
        return mask
    if a2a in ("mooncake", "nixl"):
        cls = mooncake.MooncakeEPDispatcher if a2a == "mooncake" else nixl.NixlEPDispatcher
        return cls.__new__(cls)
    low_latency = "_ll" in dispatch
    if a2a == "deepep":
        dispatcher: Any = deepep.DeepEPDispatcher.__new__(deepep.DeepEPDispatcher)
        impl_cls: Any = (
            deepep._DeepEPDispatcherImplLowLatency
            if low_latency
            else deepep._DeepEPDispatcherImplNormal
        )
        impl = impl_cls.__new__(impl_cls)
        impl.use_fp8 = dispatch.endswith("_fp8")
    else:
        dispatcher = moriep.MoriEPDispatcher.__new__(moriep.MoriEPDispatcher)
        impl_cls = (
            moriep._MoriEPDispatcherImplLowLatency
            if low_latency
            else moriep._MoriEPv2DispatcherImplNormal
            if dispatch.startswith("mori_v2")
            else moriep._MoriEPDispatcherImplNormal
        )
        impl = impl_cls.__new__(impl_cls)
        # mori_{normal,ll,v2}[_wire]; SGLang has no per-token fp8 wire (a KeyError here).
        wire = (dispatch.split("_", 2)[2:] or ["bf16"])[0]
        impl.dispatch_dtype = moriep.DispatchDtype[wire]
    dispatcher.expert_mask_gpu = mask.expert_mask_gpu
    setattr(dispatcher, "_low_latency_dispatcher" if low_latency else "_normal_dispatcher", impl)
    return dispatcher


def _layers(quant: str, a2a: str, dispatch: str, ep_size: int = 2) -> list[tuple[Layer, Any]]:
    harness.set_a2a_backend(a2a)
    weights = make_expert_weights(quant, NUM_EXPERTS, HIDDEN, INTERMEDIATE, seed=3)
    batch = emulate.make_batch(TOKENS, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=ep_size, seed=4)
    dispatched = emulate.dispatch(batch, dispatch)
    local = NUM_EXPERTS // ep_size
    out = []
    for rank, ours in enumerate(dispatched.outputs):
        config = paths.rank_config(rank, ep_size)
        layer = Layer(quant, config, slice_experts(weights, rank * local, (rank + 1) * local))
        layer.dispatcher = _dispatcher(a2a, dispatch, config)
        out.append((layer, harness.sglang_dispatch_output(ours)))
    return out


# Where SGLang is wrong (fp8_channel on MORI's fp8 wire) test_moe_runner.py holds the dense test.
APPLY_CASES = [
    (quant, a2a, dispatch)
    for quant in METHODS
    for a2a, dispatch in FORMATS
    if known_wrong(a2a, quant, dispatch, ep_size=2) is None
]


@pytest.mark.parametrize(
    ("quant", "a2a", "dispatch"), APPLY_CASES, ids=["/".join(c) for c in APPLY_CASES]
)
def test_apply_through_installed_runner(
    quant: str, a2a: str, dispatch: str, caplog: pytest.LogCaptureFixture
) -> None:
    for layer, dispatch_output in _layers(quant, a2a, dispatch):
        native = layer.quant_method.apply(layer, dispatch_output)
        native_call = harness.last_call()
        with caplog.at_level(logging.INFO, logger=integration.__name__):
            done = integration.install(layer)
        module = generated.RUNNERS[(a2a, quant, dispatch)]
        assert done.keys == ((a2a, quant, dispatch),)
        assert f"{a2a}/{quant}/{dispatch} served by generated.{module}" in caplog.text
        assert integration.installed(layer) is done
        installed = layer.quant_method.apply(layer, dispatch_output)
        installed_call = harness.last_call()
        assert installed_call is not native_call
        compare.assert_exact(native, native_call, installed, installed_call)
        # Off again: SGLang's own path, the same call once more.
        assert integration.uninstall(layer)
        assert integration.installed(layer) is None
        again = layer.quant_method.apply(layer, dispatch_output)
        assert compare.call_differences(native_call, harness.last_call()) == []
        assert compare.combine_differences(native, again) == []
    COUNTS["exact via quant_method.apply"] += 1


def test_auto_mode_installs_both_formats_and_picks_by_output_class() -> None:
    (layer, normal_output), _ = _layers("fp8_block", "deepep", "deepep_normal")
    layer.dispatcher._low_latency_dispatcher = deepep._DeepEPDispatcherImplLowLatency.__new__(
        deepep._DeepEPDispatcherImplLowLatency
    )
    layer.dispatcher._low_latency_dispatcher.use_fp8 = True
    done = integration.install(layer)
    assert [key[2] for key in done.keys] == ["deepep_normal", "deepep_ll_fp8"]
    native_runner = harness.moe_runner(_config_of(layer))
    info = layer.quant_method.maybe_get_hip_aiter_quant_info(layer)
    native = native_runner.run(normal_output, info)
    native_call = harness.last_call()
    installed = layer.quant_method.apply(layer, normal_output)
    assert compare.call_differences(native_call, harness.last_call()) == []
    assert compare.combine_differences(native, installed) == []


def _config_of(layer: Layer) -> t.MoeLayerConfig:
    return integration.layer_config(
        layer.moe_runner_config, ep_rank=layer.moe_ep_rank, ep_size=layer.moe_ep_size
    )


def test_refusals_are_made_at_install_with_the_reason() -> None:
    (layer, _), _ = _layers("fp8_block", "deepep", "deepep_normal")
    # A key the matrix does not have: the dispatch table's own error.
    with pytest.raises(generated.UnsupportedCombination, match="mori_normal"):
        integration.install(layer, dispatch=["mori_normal"])
    assert integration.installed(layer) is None
    integration.install(layer)
    with pytest.raises(integration.SGLangIntegrationError, match="already installed"):
        integration.install(layer)
    integration.uninstall(layer)
    layer.quant_method.runner.lora_enabled = True
    with pytest.raises(integration.SGLangIntegrationError, match="LoRA"):
        integration.install(layer)
    layer.quant_method.runner.lora_enabled = False
    layer.moe_runner_config.no_combine = True
    with pytest.raises(integration.SGLangIntegrationError, match="no_combine"):
        integration.install(layer)
    layer.moe_runner_config.no_combine = False
    layer.moe_runner_config.swiglu_limit = 7.0
    with pytest.raises(integration.SGLangIntegrationError, match="gate_mode"):
        integration.install(layer)
    layer.moe_runner_config.swiglu_limit = None
    assert integration.installed(layer) is None
    # Nothing was left half-installed by a refusal: the layer installs cleanly now.
    integration.install(layer)
    assert integration.uninstall(layer)
    assert not integration.uninstall(layer)


def test_layer_without_an_aiter_runner_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    harness.set_runner_backend(monkeypatch, moe_utils.MoeRunnerBackend.TRITON)
    (layer, _), _ = _layers("fp8_block", "none", "standard")
    with pytest.raises(integration.SGLangIntegrationError, match="not aiter"):
        integration.install(layer)


def test_unsupported_release_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(integration.importlib.metadata, "version", lambda name: "0.5.99")
    with pytest.raises(integration.SGLangIntegrationError, match=r"0\.5\.99 is not supported"):
        integration.sglang_release()
    assert harness.RELEASE in integration.SUPPORTED_RELEASES


_ROW_ARGUMENTS = ("hidden_states", "a1_scale", "topk_ids", "topk_weight")


def _first_rows(call: dict[str, Any], rows: int) -> dict[str, Any]:
    """A recorded kernel call restricted to its first `rows` rows (and the output's)."""
    cut = {name: call[name][:rows] for name in _ROW_ARGUMENTS if call.get(name) is not None}
    if "result" in call:
        cut["result"] = call["result"][:rows]
    return {**call, **cut}


def _first_rows_combine(combine_input: Any, rows: int) -> Any:
    return combine_input._replace(hidden_states=combine_input.hidden_states[:rows])


def test_mori_receive_cap_is_read_where_sglang_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """0.5.13 reads SGLANG_MORI_MOE_MAX_INPUT_TOKENS (install reads it once); 0.5.23 carries the
    cap on the dispatch output. Either way both paths keep the same first rows."""
    checked = 0
    for layer, dispatch_output in _layers("fp8_block", "mori", "mori_normal_fp8"):
        rows = dispatch_output.hidden_states.shape[0]
        # A cap at the rows received: the stale rows past them are cut.
        cap = int(dispatch_output.num_recv_tokens_per_expert.reshape(()))
        if not 0 < cap < rows:
            continue
        monkeypatch.setenv(integration.MORI_MAX_INPUT_TOKENS_ENV, str(cap))
        capped = dispatch_output
        if harness.MORI_HAS_RECV_CAP:
            capped = dispatch_output._replace(recv_cap=cap)
        native = layer.quant_method.apply(layer, capped)
        native_call = harness.last_call()
        assert native_call["hidden_states"].shape[0] == cap
        integration.install(layer)
        installed = layer.quant_method.apply(layer, capped)
        # SGLang slices MORI's buffer to the cap; the generated runner hands the kernel the whole
        # buffer, whose rows past total_recv (= the cap here) neither the kernel (num_local_tokens)
        # nor MORI's combine reads (issue 14). On the rows both read, the calls are the same.
        installed_call = harness.last_call()
        assert installed_call["hidden_states"].shape[0] == rows
        assert compare.call_differences(native_call, _first_rows(installed_call, cap)) == []
        assert compare.combine_differences(native, _first_rows_combine(installed, cap)) == []
        # Negative control: one changed row among those both read is seen.
        assert compare.call_differences(
            native_call, _first_rows(compare.perturbed_call(installed_call), cap)
        )
        # Negative control: SGLang's own path without the cap makes a different call.
        integration.uninstall(layer)
        monkeypatch.delenv(integration.MORI_MAX_INPUT_TOKENS_ENV)
        layer.quant_method.apply(layer, dispatch_output)
        assert compare.call_differences(native_call, harness.last_call())
        checked += 1
    assert checked


def test_install_all_serves_every_moe_layer_and_fallback_is_opt_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layers = [layer for layer, _ in _layers("fp8_block", "deepep", "deepep_normal")]
    model = torch.nn.ModuleDict({"experts0": layers[0], "experts1": layers[1]})
    with caplog.at_level(logging.INFO, logger=integration.__name__):
        done = integration.install_all(model)
    assert [d.name for d in done] == ["experts0", "experts1"]
    assert caplog.text.count("served by generated.deepep__fp8_block__deepep_normal") == 2
    for layer in layers:
        integration.uninstall(layer)
    layers[1].quant_method.runner.lora_enabled = True
    with pytest.raises(integration.SGLangIntegrationError, match=r"experts1.*LoRA"):
        integration.install_all(model)
    integration.uninstall(layers[0])
    with caplog.at_level(logging.WARNING, logger=integration.__name__):
        done = integration.install_all(model, fallback=True)
    assert [d.name for d in done] == ["experts0"]
    assert "experts1 stays on SGLang's MoE path" in caplog.text
    assert integration.installed(layers[1]) is None
    integration.uninstall(layers[0])


def test_mooncake_and_nixl_layers_are_refused_where_apply_cannot_run() -> None:
    """Their dispatchers have no expert_mask_gpu, which these quant methods read in apply."""
    (layer, dispatch_output), _ = _layers("fp8_block", "deepep", "deepep_normal")
    for a2a, cls in (("mooncake", mooncake.MooncakeEPDispatcher), ("nixl", nixl.NixlEPDispatcher)):
        harness.set_a2a_backend(a2a)
        layer.dispatcher = cls.__new__(cls)
        with pytest.raises(integration.SGLangIntegrationError, match="expert_mask_gpu"):
            integration.install(layer, dispatch=["deepep_ll_fp8"])
        with pytest.raises(AttributeError, match="expert_mask_gpu"):
            layer.quant_method.apply(layer, dispatch_output)
        assert integration.installed(layer) is None

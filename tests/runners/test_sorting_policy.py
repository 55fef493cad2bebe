"""`MoeLayerConfig.moe_sorting_dispatch_policy`: a load-time layer option that the generated runner
binds into its kernel (like `swiglu_limit`), only when it is not AITER's default 0; a kernel
without the keyword is refused at load; the policy never changes the result."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

import generated
from moe_runtime import types as t
from moe_runtime.kernels import reference
from moe_runtime.testing import emulate
from moe_runtime.testing.recording import RecordingKernel
from moe_runtime.testing.weights import make_expert_weights
from tests.runners.harness import HIDDEN, INTERMEDIATE

KEYS = [("none", "unquant", "standard"), ("deepep", "fp8_block", "deepep_normal"),
        ("mori", "mxfp4", "mori_normal")]  # fmt: skip


class PolicyRecorder(RecordingKernel):
    """A recording kernel that takes `moe_sorting_dispatch_policy` by name (as AITER does)."""

    def __call__(
        self, *args: Any, moe_sorting_dispatch_policy: int | None = None, **kwargs: Any
    ) -> torch.Tensor:
        passed = {} if moe_sorting_dispatch_policy is None else {
            "moe_sorting_dispatch_policy": moe_sorting_dispatch_policy
        }  # fmt: skip
        return super().__call__(*args, **passed, **kwargs)


def _config(quant: str, **extra: Any) -> t.MoeLayerConfig:
    activation = "swiglu" if quant == "mxfp4" else "silu"
    return t.MoeLayerConfig(8, 8, 0, 1, 2, HIDDEN, INTERMEDIATE, activation, **extra)


def _output(fmt: str) -> Any:
    batch = emulate.make_batch(3, HIDDEN, 8, 2, ep_size=1, seed=1)
    return emulate.dispatch(batch, fmt).outputs[0]


@pytest.mark.parametrize("key", KEYS, ids=["/".join(k) for k in KEYS])
def test_the_policy_is_bound_into_the_kernel_only_when_not_zero(key: tuple[str, str, str]) -> None:
    _, quant, fmt = key
    weights = make_expert_weights(quant, 8, HIDDEN, INTERMEDIATE, seed=0)
    for policy, passed in ((2, 2), (1, 1), (0, None)):
        kernel = PolicyRecorder()
        runner = generated.select(*key)(_config(quant, moe_sorting_dispatch_policy=policy),
                                        weights, kernel=kernel)  # fmt: skip
        runner(_output(fmt))
        runner(_output(fmt))
        got = [call.get("moe_sorting_dispatch_policy") for call in kernel.calls]
        assert got == [passed, passed], policy


def test_a_kernel_without_the_keyword_is_refused_for_a_policy() -> None:
    weights = make_expert_weights("unquant", 8, HIDDEN, INTERMEDIATE, seed=0)
    runner_type = generated.select("none", "unquant", "standard")
    # Policy 0 needs nothing of the kernel: the same kernel loads.
    runner_type(_config("unquant"), weights, kernel=RecordingKernel())
    with pytest.raises(t.ConfigError) as raised:
        runner_type(_config("unquant", moe_sorting_dispatch_policy=2), weights,
                    kernel=RecordingKernel())  # fmt: skip
    assert str(raised.value).startswith(
        "moe_sorting_dispatch_policy=2 needs a kernel with a `moe_sorting_dispatch_policy` "
        "keyword (AITER's fused_moe has it from v0.1.7.post2); the bound kernel ("
    )


@pytest.mark.parametrize("value", [-1, 3, 2.0, True, "2"])
def test_the_config_refuses_an_unknown_policy(value: object) -> None:
    with pytest.raises(t.ConfigError, match="moe_sorting_dispatch_policy must be one of 0, 1, 2"):
        _config("unquant", moe_sorting_dispatch_policy=value)


def test_the_policy_does_not_change_the_result() -> None:
    """The reference (which takes the keyword) gives the same bytes under every policy; the
    negative control, w2 negated, does not."""
    weights = make_expert_weights("unquant", 8, HIDDEN, INTERMEDIATE, seed=0)
    runner_type = generated.select("none", "unquant", "standard")
    kernel = reference.ReferenceFusedMoe()
    outputs = [
        runner_type(_config("unquant", moe_sorting_dispatch_policy=p), weights, kernel=kernel)(
            _output("standard")
        ).hidden_states
        for p in (0, 1, 2)
    ]
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
    negated = -weights.w2_weight
    other = runner_type(_config("unquant", moe_sorting_dispatch_policy=2),
                        dataclasses.replace(weights, w2_weight=negated), kernel=kernel)  # fmt: skip
    assert not torch.equal(other(_output("standard")).hidden_states, outputs[0])

"""The contract between the plan and the templates, stated once.

`STEPS` registers every fragment a decision record may choose
(`templates/fragments/<kind>/<name>.py.j2`) under the topic of the record that chooses it, in the
order the generated module runs them; `KERNEL_KEYWORDS` the kernel keywords a record may pass, in
fused_moe's order. Making a plan (generator/decision.py) checks each record's choices against
them, and `render.check_fragments` compares `STEPS` with the templates directory before anything
is rendered, so a missing or unused fragment is an error naming both, not a `TemplateNotFound`
halfway through. `NAMES` holds the Python names that fragments define and the records'
expressions read: both take them from here, and templates get them as `names`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

ALWAYS = "every runner"
# pyproject.toml's [tool.ruff] line-length: generated code is laid out as `ruff format` keeps it.
LINE_LENGTH = 100


class TemplateProblem(Exception):
    """A template that fails to render, or a plan that breaks the contract; names both."""


# kind -> fragment name -> the topic of the decision record that chooses it, in program order.
STEPS: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "load": MappingProxyType(
            {
                "check_weights": "weights",
                "dispatch_types": ALWAYS,
                "router_weight_refused": "apply_router_weight_on_input",
                "router_weight_stage1": "apply_router_weight_on_input",
                "activation_layer": "activation",
                "activation_swiglu": "activation",
                "refuse_hidden_pad": "hidden padding",
                "bind_kernel": ALWAYS,
                "weight_scales": "weights",
                "biases": "weights",
                "pads": "hidden padding",
                "router_weight_input_scaling": "apply_router_weight_on_input",
                "mask_standard": "expert mask",
                "mask_global": "expert mask",
                "mask_sink": "expert mask",
                "ids_minus_one_to_sink": "top-k ids",
                "ids_slab_slots": "top-k ids",
                "wire_upscale": "wire",
                "writes_output": "expert output",
                "bind_kernel_arguments": ALWAYS,
            }
        ),
        "call": MappingProxyType(
            {
                "dispatch_type": ALWAYS,
                "unpack_slab_shape": "dispatch layout",
                "unpack_slabs": "dispatch layout",
                "unpack_recv_cap": "dispatch layout",
                "unpack_flat": "dispatch layout",
                "unpack_standard": "dispatch layout",
                "scale_slabs": "wire",
                "scale_flat": "wire",
                "zero_row_guard": "zero-row guard",
                "ids_minus_one_to_sink": "top-k ids",
                "ids_slab_slots": "top-k ids",
                "wire_upscale": "wire",
                "wire_upscale_slabs": "wire",
                "kernel_call": ALWAYS,
                "combine": "combine input",
            }
        ),
        "check": MappingProxyType(
            {
                "dispatch_type": ALWAYS,
                "unpack_slabs": "dispatch layout",
                "unpack_recv_cap": "dispatch layout",
                "unpack_standard": "dispatch layout",
                "unpack_flat": "dispatch layout",
                "hidden_slabs": "dispatch layout",
                "hidden_flat": "dispatch layout",
                "scale_slabs": "wire",
                "scale_flat": "wire",
                "no_scale": "wire",
                "routing": ALWAYS,
                "total_recv": "valid rows",
                "origin_routing": "valid rows",
                "masked_m": "valid rows",
                "ids_in_range": "valid rows",
                "recv_counts": "top-k ids",
                "expert_output": "expert output",
            }
        ),
    }
)


# The keywords a record may pass to the kernel, in fused_moe's order (moe_runtime.types'
# FusedMoeKernel, its keyword-only `output` last), which the generated calls follow; mypy checks
# every generated call against that protocol.
KERNEL_KEYWORDS = (
    "expert_mask",
    "activation",
    "quant_type",
    "doweight_stage1",
    "w1_scale",
    "w2_scale",
    "a1_scale",
    "num_local_tokens",
    "dtype",
    "hidden_pad",
    "intermediate_pad",
    "bias1",
    "bias2",
    "output",
)


@dataclass(frozen=True, slots=True)
class Names:
    """Names a fragment defines (a local of the hot path, an attribute set at load) that the
    plan's expressions or other fragments read."""

    kernel_topk_ids: str = "kernel_topk_ids"
    kernel_topk_weights: str = "kernel_topk_weights"
    expert_mask: str = "self._expert_mask"
    activation: str = "self._activation"
    quant_type: str = "self._quant_type"
    doweight_stage1: str = "self._doweight_stage1"
    w13_scale: str = "self._w13_scale"
    w2_scale: str = "self._w2_scale"
    hidden_pad: str = "self._hidden_pad"
    intermediate_pad: str = "self._intermediate_pad"
    b13: str = "self._b13"
    b2: str = "self._b2"


NAMES = Names()

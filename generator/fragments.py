"""The contract between the plan and the templates, stated once.

`STEPS` registers every fragment the plan may choose (`templates/fragments/<kind>/<name>.py.j2`)
with the decision that chooses it; `render.check_fragments` compares it with the templates
directory before anything is rendered, so a missing or unused fragment is an error naming both,
not a `TemplateNotFound` halfway through. `NAMES` holds the Python names that fragments define
and the plan's expressions read: both take them from here, and templates get them as `names`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

ALWAYS = "every runner"

# kind -> fragment name -> the decision or matrix fact that chooses the fragment.
STEPS: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "load": MappingProxyType(
            {
                "check_weights": ALWAYS,
                "dispatch_types": ALWAYS,
                "router_weight_refused": "apply_router_weight_on_input",
                "router_weight_stage1": "apply_router_weight_on_input",
                "activation_layer": "activation",
                "activation_swiglu": "activation",
                "refuse_hidden_pad": "hidden padding",
                "bind_kernel": ALWAYS,
                "weight_scales": "quant method's weight scales",
                "biases": "quant method's biases",
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
                "combine": ALWAYS,
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
                "ids_in_range": "row count",
                "total_recv": "row count",
                "origin_routing": "row count",
                "masked_m": "row count",
                "recv_counts": "top-k ids",
                "expert_output": "expert output",
            }
        ),
    }
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

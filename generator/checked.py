"""The checked variant's validation prologue: which checks a format's dispatch output gets.

Every generated module defines `CheckedRunner(Runner)`, chosen at load with
`generated.select(..., checked=True)`. Its `__call__` runs the steps planned here (templates under
`templates/fragments/check/`), then the plain hot path. Host checks cover dtypes, shapes and
Python values; id ranges, `masked_m` and `total_recv` are device-side asserts, so the prologue
never syncs and stays CUDA-graph capturable (moe_runtime.checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from generator.model import DispatchFormat, IdSpace, Layout, RowCount, Wire

# The hidden-states dtypes each wire carries; bf16 stands for the layer's activation dtype.
_HIDDEN_DTYPES = {
    Wire.BF16: "(torch.bfloat16, torch.float16)",
    Wire.FP8_1X128: "(torch.float8_e4m3fn, torch.float8_e4m3fnuz)",
    Wire.FP4_1X32: "(torch.float4_e2m1fn_x2,)",
    Wire.MXFP8_1X32: "(torch.float8_e4m3fn, torch.float8_e4m3fnuz)",
    Wire.FP8_PER_TOKEN: "(torch.float8_e4m3fn, torch.float8_e4m3fnuz)",
}
_HIDDEN_WIDTH = {
    Wire.BF16: "self._layer.hidden_size",
    Wire.FP8_1X128: "self._layer.hidden_size",
    Wire.FP4_1X32: "self._layer.hidden_size // 2",  # two fp4 values per byte
    Wire.MXFP8_1X32: "self._layer.hidden_size",
    Wire.FP8_PER_TOKEN: "self._layer.hidden_size",
}
_SCALE_DTYPES = {
    Wire.BF16: "",
    Wire.FP8_1X128: "(torch.float32,)",
    Wire.FP4_1X32: "(torch.float8_e8m0fnu, torch.uint8)",
    Wire.MXFP8_1X32: "(torch.float8_e8m0fnu, torch.uint8)",
    Wire.FP8_PER_TOKEN: "(torch.float32,)",
}
_SCALE_WIDTH = {
    Wire.BF16: "",
    Wire.FP8_1X128: "self._layer.hidden_size // 128",
    Wire.FP4_1X32: "self._layer.hidden_size // 32",
    Wire.MXFP8_1X32: "self._layer.hidden_size // 32",
    Wire.FP8_PER_TOKEN: "1",
}


@dataclass(frozen=True, slots=True)
class CheckPlan:
    """The prologue's steps and the bounds they substitute (Python expressions)."""

    fragments: tuple[str, ...]
    hidden_dtypes: str
    hidden_width: str
    scale_dtypes: str  # "" on a bf16 wire (the scale must be None)
    scale_width: str
    id_dtypes: str
    id_low: str  # "-1" where the format allows -1, else "0"
    id_high: str
    routing_rows: str  # rows of topk_ids: the received rows, or None (the sender's own tokens)
    summary: str  # the decision's choice, as --explain prints it


def plan_checks(fmt: DispatchFormat) -> CheckPlan:
    """The validation prologue of one dispatch format; pure, deterministic."""
    quantized = fmt.wire is not Wire.BF16
    match fmt.layout:
        case Layout.MASKED_SLABS:
            unpack = ["unpack_slabs", "hidden_slabs"]
            scale = "scale_slabs" if quantized else "no_scale"
        case Layout.FLAT if fmt.truncate_to_recv_cap:
            unpack = ["unpack_recv_cap", "hidden_flat"]
            scale = "scale_flat" if quantized else "no_scale"
        case Layout.FLAT if fmt.dispatch_output == "StandardDispatchOutput":
            unpack = ["unpack_standard", "hidden_flat"]
            scale = "scale_flat" if quantized else "no_scale"
        case Layout.FLAT:
            unpack = ["unpack_flat", "hidden_flat"]
            scale = "scale_flat" if quantized else "no_scale"
        case _:
            assert_never(fmt.layout)
    steps = ["dispatch_type", *unpack, scale, "routing"]
    match fmt.row_count:
        case RowCount.SHAPE:
            steps.append("ids_in_range")
        case RowCount.TOTAL_RECV:
            steps += ["total_recv", "origin_routing"]
        case RowCount.MASKED_M:
            steps += ["masked_m", "ids_in_range"]
        case _:
            assert_never(fmt.row_count)
    if fmt.id_space is IdSpace.LOCAL_WITH_MINUS_ONE:
        steps.append("recv_counts")
    if fmt.dispatch_output == "MoriEPV2DispatchOutput":
        steps.append("expert_output")

    match fmt.id_space:
        case IdSpace.GLOBAL:
            ids = ("(torch.int32,)", "0", "self._layer.num_experts")
            what = "ids int32 in [0, E)"
        case IdSpace.LOCAL_WITH_MINUS_ONE:
            ids = ("(torch.int64, torch.int32)", "-1", "self._layer.num_local_experts")
            what = "local ids in [-1, L) (L + 1 or -2 would alias a real expert)"
        case IdSpace.SLAB_INDEX:
            ids = ("(torch.int64, torch.int32)", "-1", "self._layer.num_experts")
            what = "the sender's ids in [-1, E), masked_m [L] in [0, C]"
        case _:
            assert_never(fmt.id_space)
    extra = {
        RowCount.SHAPE: "",
        RowCount.TOTAL_RECV: ", recv_cap >= 0, total_recv in [0, kept rows]",
        RowCount.MASKED_M: "",
    }[fmt.row_count]
    return CheckPlan(
        fragments=tuple(steps),
        hidden_dtypes=_HIDDEN_DTYPES[fmt.wire],
        hidden_width=_HIDDEN_WIDTH[fmt.wire],
        scale_dtypes=_SCALE_DTYPES[fmt.wire],
        scale_width=_SCALE_WIDTH[fmt.wire],
        id_dtypes=ids[0],
        id_low=ids[1],
        id_high=ids[2],
        routing_rows="None" if fmt.layout is Layout.MASKED_SLABS else "hidden_states.shape[0]",
        summary=f"CheckedRunner: dtypes and shapes on the host, {what}{extra} on the device",
    )

"""moe_runtime.formats states facts of the matrix's dispatch formats again, for the code that runs
without the generator (the emulated and process dispatchers, the adapters): the names, each MORI
format's wire and its scale group, the combine input, the low-latency and EPv2 sets. Each must
agree with schema/amd.yaml, both ways."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from generator.loader import load_matrix
from generator.model import DispatchFormat, Layout, Wire
from moe_runtime import formats

AMD = Path(__file__).resolve().parents[2] / "schema" / "amd.yaml"
# The runtime's MORI wire names, as the matrix's wire enum spells them.
_MATRIX_WIRE = {
    "bf16": Wire.BF16,
    "fp8": Wire.FP8_1X128,
    "fp4": Wire.FP4_1X32,
    "mxfp8": Wire.MXFP8_1X32,
    "fp8_token": Wire.FP8_PER_TOKEN,
}
_GROUP = {
    Wire.BF16: 0,
    Wire.FP8_1X128: 128,
    Wire.FP4_1X32: 32,
    Wire.MXFP8_1X32: 32,
    Wire.FP8_PER_TOKEN: 0,
}


def _disagreements(
    matrix_formats: tuple[DispatchFormat, ...], mori_wires: Mapping[str, str]
) -> list[str]:
    """Every fact of `formats` (with `mori_wires` for its MORI wire table) that the matrix's
    dispatch formats say otherwise."""
    found = []
    names = [f.name for f in matrix_formats]
    if sorted(names) != sorted(formats.FORMATS):
        found.append(f"names: matrix {sorted(names)}, runtime {sorted(formats.FORMATS)}")
    for entry in matrix_formats:
        name = entry.name
        is_mori = entry.dispatch_output.startswith("MoriEP")
        if is_mori and _MATRIX_WIRE.get(mori_wires.get(name, "")) is not entry.wire:
            found.append(f"{name}: wire {mori_wires.get(name)} vs the matrix's {entry.wire.value}")
        if not is_mori and name in mori_wires:
            found.append(f"{name}: a MORI wire for a format that is not MORI's")
        if formats.wire_group(name) != _GROUP[entry.wire]:
            found.append(f"{name}: wire group {formats.wire_group(name)} vs {entry.wire.value}")
        combine = formats.COMBINE_INPUT_TYPES[name].__name__
        if combine != entry.combine_input:
            found.append(f"{name}: combines {combine}, the matrix {entry.combine_input}")
        facts = (
            ("DEEPEP_LL_FORMATS", formats.DEEPEP_LL_FORMATS, entry.layout is Layout.MASKED_SLABS),
            ("MORI_LL_FORMATS", formats.MORI_LL_FORMATS,
             entry.dispatch_output == "MoriEPLLDispatchOutput"),
            ("MORI_V2_FORMATS", formats.MORI_V2_FORMATS,
             entry.dispatch_output == "MoriEPV2DispatchOutput"),
        )  # fmt: skip
        for set_name, members, matrix_says in facts:
            if (name in members) != matrix_says:
                found.append(
                    f"{name}: in {set_name} is {name in members}, the matrix {matrix_says}"
                )
    return found


def test_the_runtime_formats_are_the_matrix_formats() -> None:
    assert _disagreements(load_matrix(AMD).dispatch_formats, formats.MORI_WIRES) == []


def test_a_format_the_runtime_states_otherwise_is_found() -> None:
    """Negative control: one MORI wire and one combine input changed, each is named."""
    matrix_formats = load_matrix(AMD).dispatch_formats
    wrong_wire = {**formats.MORI_WIRES, formats.MORI_LL_FP8: "fp4"}
    assert _disagreements(matrix_formats, wrong_wire) == [
        "mori_ll_fp8: wire fp4 vs the matrix's fp8_1x128"
    ]
    edited = tuple(
        dataclasses.replace(f, combine_input="DeepEPLLCombineInput")
        if f.name == formats.MORI_V2
        else f
        for f in matrix_formats
    )
    assert _disagreements(edited, formats.MORI_WIRES) == [
        "mori_v2: combines MoriEPNormalCombineInput, the matrix DeepEPLLCombineInput"
    ]

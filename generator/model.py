"""The typed, frozen model of a backend matrix. Nothing past the loader sees YAML or dicts.

Names of backends, formats and quant methods are data (the matrix defines them); every property the
planner decides on is an enum, so `match` + `assert_never` covers each one.

The dataclasses are the one statement of the matrix's schema: every field is a key of its YAML
mapping unless marked `_not_a_key`, required keys before optional ones (`matrix_keys`); `_key` adds
what the loader and generator/json_schema.py need beyond the type (a description, a closed set of
strings, the section a name refers to).
"""

from __future__ import annotations

import dataclasses
from dataclasses import KW_ONLY, dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# Class names in moe_runtime.types (the generator never imports it: that would import torch).
DISPATCH_OUTPUTS = (
    "StandardDispatchOutput",
    "DeepEPNormalDispatchOutput",
    "DeepEPLLDispatchOutput",
    "MoriEPNormalDispatchOutput",
    "MoriEPLLDispatchOutput",
    "MoriEPV2DispatchOutput",
)
COMBINE_INPUTS = (
    "StandardCombineInput",
    "DeepEPNormalCombineInput",
    "DeepEPLLCombineInput",
    "MoriEPNormalCombineInput",
    "MoriEPLLCombineInput",
)
# The SGLang releases and AITER releases the support facts (generated/FEATURES.md) may name, oldest
# first: the releases this project tests against or binds (moe_runtime/kernels/keywords.py).
SGLANG_RELEASES = ("0.5.13", "0.5.23")
# "after v0.1.20.post1": a keyword in no tagged release yet (keywords.ADDED_IN says which).
AITER_RELEASES = ("v0.1.7.post2", "v0.1.14", "v0.1.16.post1", "v0.1.19", "after v0.1.20.post1")
# torch dtype names that expert weights can be stored in.
WEIGHT_DTYPES = (
    "bfloat16",
    "float16",
    "float32",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float4_e2m1fn_x2",
    "int8",
    "uint8",
    "int32",
)


def _key(
    doc: str = "", *, choices: tuple[str, ...] = (), refers_to: str = "", optional: bool = False
) -> dict[str, Any]:
    """Field metadata of a matrix key: its description, its closed set of string values, or the
    section whose names it holds (a plain `str` key without choices is free, non-empty text). An
    optional key may be left out; the field's default then stands."""
    return {"doc": doc, "choices": choices, "refers_to": refers_to, "optional": optional}


# Field metadata of what the loader fills from the file's structure (a mapping's name, a position).
_NOT_A_KEY = {"not_a_key": True}


def _optional(default: Any, doc: str, choices: tuple[str, ...] = ()) -> Any:
    """An optional key's field: left out, `default` stands."""
    return field(default=default, metadata=_key(doc, choices=choices, optional=True))


def matrix_keys(cls: type[DataclassInstance]) -> tuple[dataclasses.Field[Any], ...]:
    """The fields of a model class that are keys of its YAML mapping: the required ones, then the
    optional ones (an `Entry`'s support facts, which its base class declares first), each in the
    order declared."""
    keys = [f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("not_a_key")]
    return tuple(sorted(keys, key=lambda f: bool(f.metadata.get("optional"))))


def key_names(cls: type[DataclassInstance]) -> tuple[str, ...]:
    return tuple(f.name for f in matrix_keys(cls))


def required_key_names(cls: type[DataclassInstance]) -> tuple[str, ...]:
    return tuple(f.name for f in matrix_keys(cls) if not f.metadata.get("optional"))


@dataclass(frozen=True, slots=True, order=True)
class Location:
    """Where a node sits in the matrix file (1-based line and column)."""

    line: int
    column: int


class Layout(Enum):
    """Shape of the activations a dispatcher hands over."""

    FLAT = "flat"  # [rows, H], one row per (token, destination rank)
    MASKED_SLABS = "masked_slabs"  # [L, C, H], slab e holds rows routed to local expert e


class IdSpace(Enum):
    """What the dispatched top-k ids mean."""

    GLOBAL = "global"  # global expert ids; the mask selects this rank's slice
    LOCAL_WITH_MINUS_ONE = "local_with_minus_one"  # local ids, -1 for experts on other ranks
    SLAB_INDEX = "slab_index"  # no per-row ids: the slab index is the local expert


class Sink(Enum):
    """Whether ids that must not be computed are rerouted to an extra masked-off id `L`."""

    NONE = "none"
    LOCAL = "local"  # mask [L+1], the last entry (id L) is 0


class RowCount(Enum):
    """Where the number of valid rows comes from."""

    SHAPE = "shape"  # every row of the tensor is valid
    TOTAL_RECV = "total_recv"  # a device tensor [1]; rows past it are stale
    MASKED_M = "masked_m"  # per-slab counts [L]; rows past them are garbage


class Wire(Enum):
    """The activation dtype on the wire, with its scale granularity."""

    BF16 = "bf16"
    FP8_1X128 = "fp8_1x128"  # float8 e4m3 + fp32 scales per 1x128 group
    FP4_1X32 = "fp4_1x32"  # float4_e2m1fn_x2 + e8m0 scales per 1x32 group
    MXFP8_1X32 = "mxfp8_1x32"  # float8 e4m3 + e8m0 scales per 1x32 group (MX fp8)
    FP8_PER_TOKEN = "fp8_per_token"  # float8 e4m3 + one fp32 scale per row, [R, 1]


class Weighting(Enum):
    """Who multiplies expert outputs by the top-k weights."""

    KERNEL = "kernel"
    COMBINE = "combine"


class WeightKind(Enum):
    """The storage of the expert weights, which decides how a quantized wire can be consumed."""

    BF16 = "bf16"
    FP8 = "fp8"
    INT4 = "int4"
    FP4 = "fp4"


class KernelQuant(Enum):
    """AITER QuantType members by name (values live in moe_runtime.enums)."""

    NO = "No"
    PER_TENSOR = "per_Tensor"
    PER_TOKEN = "per_Token"
    PER_1X32 = "per_1x32"
    PER_1X128 = "per_1x128"
    PER_128X128 = "per_128x128"


class ActivationRule(Enum):
    """How the kernel activation is chosen."""

    LAYER = "layer"  # the layer config's activation (silu/gelu)
    SWIGLU = "swiglu"  # forced Swiglu (gpt-oss style)


@dataclass(frozen=True, slots=True)
class Entry:
    """What every backend, dispatch format and quant method has besides its properties: its name
    (the key of its mapping), its description, where it stands in the file, and its support facts,
    optional keys read only by generated/FEATURES.md (no runner reads them)."""

    name: str = field(metadata=_NOT_A_KEY)
    description: str
    _: KW_ONLY
    location: Location = field(metadata=_NOT_A_KEY)
    sglang: tuple[str, ...] = _optional(
        (),
        "SGLang releases whose AITER MoE path serves this entry (may be empty).",
        SGLANG_RELEASES,
    )
    min_aiter: str = _optional(
        "", "Oldest AITER release a generated runner for this entry works with.", AITER_RELEASES
    )
    support_source: str = _optional(
        "", "Where the sglang and min_aiter facts come from (file:line per release)."
    )


@dataclass(frozen=True, slots=True)
class A2ABackend(Entry):
    # Dispatch formats this backend produces, in matrix order.
    formats: tuple[str, ...] = field(
        metadata=_key(
            "Names of the dispatch formats this backend produces.", refers_to="dispatch_formats"
        )
    )


@dataclass(frozen=True, slots=True)
class DispatchFormat(Entry):
    dispatch_output: str = field(
        metadata=_key("Class name in moe_runtime.types.", choices=DISPATCH_OUTPUTS)
    )
    combine_input: str = field(
        metadata=_key("Class name in moe_runtime.types.", choices=COMBINE_INPUTS)
    )
    layout: Layout = field(metadata=_key("Shape of the activations handed over."))
    id_space: IdSpace = field(metadata=_key("What the dispatched top-k ids mean."))
    sink: Sink = field(
        metadata=_key("Whether ids that must not be computed go to an extra masked-off id L.")
    )
    row_count: RowCount = field(metadata=_key("Where the number of valid rows comes from."))
    wire: Wire = field(metadata=_key("Activation dtype on the wire, with its scale granularity."))
    weighting: Weighting = field(
        metadata=_key("Who multiplies expert outputs by the top-k weights.")
    )
    truncate_to_recv_cap: bool = field(
        metadata=_key("Drop rows past dispatch_output.recv_cap (MORI).")
    )


@dataclass(frozen=True, slots=True)
class QuantMethod(Entry):
    kernel_quant: KernelQuant = field(
        metadata=_key('AITER QuantType member name (quote "No": YAML 1.1 reads it as false).')
    )
    activation: ActivationRule = field(
        metadata=_key("layer: the layer's activation; swiglu: forced Swiglu.")
    )
    weight_kind: WeightKind = field(metadata=_key("Storage of the expert weights."))
    # e.g. "float8_e4m3fn"
    weight_dtype: str = field(metadata=_key("torch dtype name of w13/w2.", choices=WEIGHT_DTYPES))
    has_weight_scales: bool
    has_biases: bool
    static_input_scales: bool  # a13_scale / a2_scale come with the checkpoint
    pads_hidden: bool  # H and I are padded; activations are padded to the weights' H
    router_weight_in_stage1: bool  # apply_router_weight_on_input becomes doweight_stage1


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A (a2a, quant, dispatch) pattern that is not generated; `*` matches anything."""

    a2a: str = field(metadata=_key(refers_to="a2a_backends"))
    quant: str = field(metadata=_key(refers_to="quant_methods"))
    dispatch: str = field(metadata=_key(refers_to="dispatch_formats"))
    reason: str = field(
        metadata=_key("The fact that makes this combination impossible or unverifiable.")
    )
    location: Location = field(metadata=_NOT_A_KEY)

    def matches(self, a2a: str, quant: str, dispatch: str) -> bool:
        return all(
            pattern in ("*", value)
            for pattern, value in ((self.a2a, a2a), (self.quant, quant), (self.dispatch, dispatch))
        )


@dataclass(frozen=True, slots=True)
class Matrix:
    """A validated matrix file. Tuples keep the file's order; lookups go through the methods."""

    # As given on the command line, for diagnostics and the header.
    path: str = field(metadata=_NOT_A_KEY)
    a2a_backends: tuple[A2ABackend, ...] = field(
        metadata=_key("All-to-all backends by name; each lists the dispatch formats it produces.")
    )
    dispatch_formats: tuple[DispatchFormat, ...] = field(
        metadata=_key("Dispatch formats by name: what a dispatcher hands the runner.")
    )
    quant_methods: tuple[QuantMethod, ...] = field(
        metadata=_key("Quant methods by name: what the weights are and how AITER runs them.")
    )
    exclusions: tuple[Exclusion, ...] = field(
        metadata=_key(
            "Combinations not generated, each with the fact behind it. An exclusion that removes "
            "nothing is an error."
        )
    )
    # Lookups by name, built once: a scan per lookup is quadratic in a matrix of 10,000 formats.
    _formats: dict[str, DispatchFormat] = field(init=False, repr=False, compare=False)
    _quants: dict[str, QuantMethod] = field(init=False, repr=False, compare=False)
    _backends: dict[str, A2ABackend] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The first entry of a name wins, as the scans this replaces did.
        for attr, entries in (
            ("_formats", self.dispatch_formats),
            ("_quants", self.quant_methods),
            ("_backends", self.a2a_backends),
        ):
            by_name: dict[str, object] = {}
            for entry in entries:
                by_name.setdefault(entry.name, entry)
            object.__setattr__(self, attr, by_name)

    def dispatch_format(self, name: str) -> DispatchFormat:
        return self._formats[name]

    def quant_method(self, name: str) -> QuantMethod:
        return self._quants[name]

    def a2a_backend(self, name: str) -> A2ABackend:
        return self._backends[name]


@dataclass(frozen=True, slots=True, order=True)
class Combination:
    a2a: str
    quant: str
    dispatch: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.a2a, self.quant, self.dispatch)

    @property
    def slash_name(self) -> str:
        return f"{self.a2a}/{self.quant}/{self.dispatch}"

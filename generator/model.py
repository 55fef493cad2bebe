"""The typed, frozen model of a backend matrix. Nothing past the loader sees YAML or dicts.

Names of backends, formats and quant methods are data (the matrix defines them); every property the
planner decides on is an enum, so `match` + `assert_never` covers each one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


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
class A2ABackend:
    name: str
    description: str
    formats: tuple[str, ...]  # dispatch formats this backend produces, in matrix order
    location: Location


@dataclass(frozen=True, slots=True)
class DispatchFormat:
    name: str
    description: str
    dispatch_output: str  # class name in moe_runtime.types
    combine_input: str  # class name in moe_runtime.types
    layout: Layout
    id_space: IdSpace
    sink: Sink
    row_count: RowCount
    wire: Wire
    weighting: Weighting
    truncate_to_recv_cap: bool  # MORI: rows past dispatch_output.recv_cap are dropped
    location: Location


@dataclass(frozen=True, slots=True)
class QuantMethod:
    name: str
    description: str
    kernel_quant: KernelQuant
    activation: ActivationRule
    weight_kind: WeightKind
    weight_dtype: str  # torch dtype name of w13/w2, e.g. "float8_e4m3fn"
    has_weight_scales: bool
    has_biases: bool
    static_input_scales: bool  # a13_scale / a2_scale come with the checkpoint
    pads_hidden: bool  # H and I are padded; activations are padded to the weights' H
    router_weight_in_stage1: bool  # apply_router_weight_on_input becomes doweight_stage1
    location: Location


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A (a2a, quant, dispatch) pattern that is not generated; `*` matches anything."""

    a2a: str
    quant: str
    dispatch: str
    reason: str
    location: Location

    def matches(self, a2a: str, quant: str, dispatch: str) -> bool:
        return all(
            pattern in ("*", value)
            for pattern, value in ((self.a2a, a2a), (self.quant, quant), (self.dispatch, dispatch))
        )


@dataclass(frozen=True, slots=True)
class Matrix:
    """A validated matrix file. Tuples keep the file's order; lookups go through the methods."""

    path: str  # as given on the command line, for diagnostics and the header
    a2a_backends: tuple[A2ABackend, ...]
    dispatch_formats: tuple[DispatchFormat, ...]
    quant_methods: tuple[QuantMethod, ...]
    exclusions: tuple[Exclusion, ...]
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

"""Adapters between the real dispatchers' raw outputs and the project's dispatch-output types.

Each adapter wraps a dispatcher object the caller created (a `deep_ep.Buffer`, a Mooncake or NIXL
EP `Buffer`, a MORI `EpDispatchCombineOp`), calls it with the arguments its source defines, turns
what it returns into the `moe_runtime.types` dispatch output a generated runner takes, and hands
the runner's combine input back to the dispatcher's combine. The libraries are optional extras,
imported only by the `open_*` helpers (`_optional.require`); the adapters themselves only call
the object they are given, so fakes with the same signatures test them.
"""

from moe_runtime.distributed.adapters._optional import DispatcherUnavailable, require
from moe_runtime.distributed.adapters.deepep import DeepEPLowLatency, DeepEPNormal
from moe_runtime.distributed.adapters.mooncake import MooncakeLowLatency
from moe_runtime.distributed.adapters.mori import MoriDispatcher
from moe_runtime.distributed.adapters.nixl import NixlLowLatency

__all__ = [
    "DeepEPLowLatency",
    "DeepEPNormal",
    "DispatcherUnavailable",
    "MooncakeLowLatency",
    "MoriDispatcher",
    "NixlLowLatency",
    "require",
]

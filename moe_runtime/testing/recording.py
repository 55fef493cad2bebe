"""The recording kernel that tests and benchmarks bind, and the one comparison of recorded values.

fused_moe's signature is written once, as the `FusedMoeKernel` protocol (`moe_runtime.types`): a
call's arguments are named by binding them against it, and its defaults are read from it. A
keyword the protocol does not name (one a newer AITER release added) is kept as passed, so the
comparison with a recorded call, not the binding, is what catches an unexpected keyword.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from moe_runtime.types import FusedMoeKernel

_SIGNATURE = inspect.signature(FusedMoeKernel.__call__)
# fused_moe's v0.1.7.post2 parameters, the protocol's positional ones without `self`. Its
# keyword-only `output` is not one: only some kernels take it, so a call that does not pass it
# records no value for it.
_V0_1_7 = [
    parameter
    for parameter in list(_SIGNATURE.parameters.values())[1:]
    if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
]
# fused_moe's parameters in order.
PARAMETERS: tuple[str, ...] = tuple(parameter.name for parameter in _V0_1_7)
# What fused_moe takes for a keyword not passed.
KERNEL_DEFAULTS: dict[str, Any] = {
    parameter.name: parameter.default
    for parameter in _V0_1_7
    if parameter.default is not inspect.Parameter.empty
}


def kernel_arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """One call's arguments by name, as passed (no defaults filled in); raises TypeError for
    positional arguments or required ones that fused_moe's signature does not accept."""
    known = {name: value for name, value in kwargs.items() if name in _SIGNATURE.parameters}
    bound = _SIGNATURE.bind(None, *args, **known).arguments
    del bound["self"]
    return {**bound, **{name: kwargs[name] for name in kwargs.keys() - known.keys()}}


def output_dtype(hidden_states: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """fused_moe's output dtype: `dtype`, else the activations' when they are 16-bit floats."""
    if dtype is not None:
        return dtype
    if hidden_states.dtype in (torch.bfloat16, torch.float16):
        return hidden_states.dtype
    return torch.bfloat16


class KernelCall(Mapping[str, Any]):
    """One kernel call: `args` and `kwargs` as passed (to replay it), and by name (the mapping)."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs
        self._arguments = kernel_arguments(args, kwargs)

    def __getitem__(self, name: str) -> Any:
        return self._arguments[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arguments)

    def __len__(self) -> int:
        return len(self._arguments)

    def tensor(self, name: str) -> torch.Tensor:
        value = self._arguments[name]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"kernel argument {name} is {type(value).__name__}, not a tensor")
        return value

    def output_like(self) -> torch.Tensor:
        """An uninitialised tensor shaped and typed like fused_moe's output for this call."""
        hidden_states = self.tensor("hidden_states")
        return torch.empty(
            (hidden_states.shape[0], self.tensor("w2").shape[1]),
            dtype=output_dtype(hidden_states, self.get("dtype")),
            device=hidden_states.device,
        )


def vector_output(call: KernelCall) -> torch.Tensor:
    """tests/vectors/README.md's deterministic function of the inputs, `[M, H]`."""
    hidden_states, topk_weight = call.tensor("hidden_states"), call.tensor("topk_weight")
    m, h = hidden_states.shape[0], call.tensor("w2").shape[1]
    # fp4 has no conversion kernel on CPU: its packed bytes stand in for the values.
    fp4 = hidden_states.dtype == torch.float4_e2m1fn_x2
    values = hidden_states.view(torch.uint8) if fp4 else hidden_states
    rows = values.float().reshape(m, -1).sum(dim=-1, keepdim=True)
    mix = (topk_weight.float() * (call.tensor("topk_ids").float() + 1)).sum(dim=-1, keepdim=True)
    dtype = call.get("dtype")
    if dtype is None:
        wide = hidden_states.dtype in (torch.bfloat16, torch.float16)
        dtype = hidden_states.dtype if wide else torch.bfloat16
    return (rows * mix).expand(m, h).to(dtype)


# `output` not passed (a passed None is recorded as None).
_NO_OUTPUT: Any = object()


class RecordingKernel:
    """Records every call; answers with `respond(call)` (the vectors' function by default).

    It takes AITER's newer `output` keyword by name (MORI EPv2's runners pass it, and refuse a
    kernel without it): a call records it only when passed, and the answer is written into it and
    returned, as AITER does.
    """

    def __init__(self, respond: Callable[[KernelCall], torch.Tensor] = vector_output) -> None:
        self.calls: list[KernelCall] = []
        self._respond = respond

    def __call__(self, *args: Any, output: Any = _NO_OUTPUT, **kwargs: Any) -> torch.Tensor:
        passed = kwargs if output is _NO_OUTPUT else {**kwargs, "output": output}
        call = KernelCall(args, passed)
        self.calls.append(call)
        answer = self._respond(call)
        if isinstance(output, torch.Tensor):
            return output.copy_(answer)
        return answer

    def only_call(self) -> KernelCall:
        if len(self.calls) != 1:
            raise RuntimeError(f"expected exactly one kernel call, got {len(self.calls)}")
        return self.calls[0]


def as_dtype(value: Any) -> Any:
    """A dtype given by name ("bfloat16", as the vectors store them) as the torch.dtype."""
    return getattr(torch, value) if isinstance(value, str) else value


def value_difference(name: str, actual: Any, expected: Any) -> str | None:
    """How two values of `name` differ, or None when they are the same: tensors of one dtype and
    shape with the same bytes, dtypes (also by name), None and bools by identity, integers and
    enums by their integer value, anything else by equality."""
    if isinstance(expected, torch.Tensor) or isinstance(actual, torch.Tensor):
        if not (isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor)):
            return f"{name}: {type(actual).__name__} vs {type(expected).__name__}"
        if actual.dtype != expected.dtype or actual.shape != expected.shape:
            got, want = (f"{x.dtype}{tuple(x.shape)}" for x in (actual, expected))
            return f"{name}: {got} vs {want}"
        # Byte views: CPU torch has no equality kernel for fp8 or fp4.
        return None if torch.equal(_bytes(actual), _bytes(expected)) else f"{name}: values differ"
    if isinstance(actual, torch.dtype) or isinstance(expected, torch.dtype):
        same = as_dtype(actual) == as_dtype(expected)
    elif any(value is None or isinstance(value, bool) for value in (actual, expected)):
        same = actual is expected
    elif isinstance(actual, int) or isinstance(expected, int):
        number = _as_int(actual)
        same = number is not None and number == _as_int(expected)
    else:
        same = bool(actual == expected)
    return None if same else f"{name}: {actual!r} vs {expected!r}"


def _as_int(value: Any) -> int | None:
    # AITER's enums are not ints but convert to them.
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)

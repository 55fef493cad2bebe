"""One benchmark case: a combination at one batch size, with its four callables around one stub.

(a) the generated runner, (b) `moe_runtime.testing.dynamic` on the same input, (c) the floor: the
stub called with the generated runner's kernel arguments, prepared in advance, (d) the hand-written
runner of the format. All four call the same `StubKernel`, which returns one preallocated output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks import handwritten
from benchmarks.common import Key, StubKernel, Workload, same_call
from moe_runtime.testing.dynamic import DynamicRunner, has_path, known_wrong
from moe_runtime.testing.recording import KernelCall, RecordingKernel
from moe_runtime.types import DispatchOutput


@dataclass
class Case:
    key: Key
    tokens: int
    rank: int
    rows: int
    dispatch_output: DispatchOutput
    stub: StubKernel
    generated: Callable[[Any], Any]
    hand_written: Callable[[Any], Any]
    floor_call: KernelCall
    # None where SGLang's path raises for this combination; `dynamic_note` says why.
    dynamic: Callable[[Any], Any] | None
    dynamic_note: str | None

    def callables(self) -> dict[str, Callable[[], object]]:
        """Zero-argument calls of each variant that runs: generated, dynamic (where SGLang's
        path runs), hand-written, floor."""
        d = self.dispatch_output
        runner, hand = self.generated, self.hand_written
        stub, args, kwargs = self.stub, self.floor_call.args, self.floor_call.kwargs
        calls: dict[str, Callable[[], object]] = {"generated": lambda: runner(d)}
        dynamic = self.dynamic
        if dynamic is not None:
            calls["dynamic"] = lambda: dynamic(d)
        calls["hand-written"] = lambda: hand(d)
        calls["floor"] = lambda: stub(*args, **kwargs)
        return calls


def build_case(workload: Workload, key: Key, tokens: int) -> Case:
    """Build and cross-check the four variants of `key` at `tokens`.

    The hand-written runner must make exactly the generated runner's kernel call; a difference
    is a bug in one of them and stops the benchmark.
    """
    dispatch_format = key[2]
    placed, config, weights, runner_class, reference_call, stub = workload.recorded(key, tokens)
    d = placed.dispatch_output

    hand_written = handwritten.build(dispatch_format, stub, reference_call, config, weights)
    hand_recorder = RecordingKernel(respond=KernelCall.output_like)
    handwritten.build(dispatch_format, hand_recorder, reference_call, config, weights)(d)
    differences = same_call(reference_call, hand_recorder.only_call())
    if differences:
        raise RuntimeError(
            f"{'/'.join(key)}: the hand-written runner's kernel call differs from the "
            f"generated one in {', '.join(differences)}"
        )

    dynamic, note = _dynamic(key, config, weights, stub, d)
    return Case(
        key=key,
        tokens=tokens,
        rank=placed.rank,
        rows=placed.rows,
        dispatch_output=d,
        stub=stub,
        generated=runner_class(config, weights, kernel=stub),
        hand_written=hand_written,
        floor_call=reference_call,
        dynamic=dynamic,
        dynamic_note=note,
    )


def missing_sglang_path(key: Key) -> str | None:
    """Why SGLang 0.5.13's path (moe_runtime.testing.dynamic) has no such combination, or None
    when it has one: MORI EPv2 and the newer wires and quant methods came in later releases."""
    a2a, quant, dispatch_format = key
    if not has_path(a2a, dispatch_format):
        return f"SGLang 0.5.13 has no {dispatch_format} path (it came in a later release)"
    try:
        known_wrong(a2a, quant, dispatch_format)
    except ValueError:
        return f"SGLang 0.5.13 has no {quant} method (it came in a later release)"
    return None


def _dynamic(
    key: tuple[str, str, str], config: Any, weights: Any, stub: Any, d: Any
) -> tuple[Callable[[Any], Any] | None, str]:
    """SGLang 0.5.13's path for this case, or None with the reason it is not benchmarked."""
    a2a, quant, dispatch_format = key
    missing = missing_sglang_path(key)
    if missing:
        return None, missing
    dynamic: Callable[[Any], Any] | None = DynamicRunner(
        config, weights, quant, kernel=stub, a2a_backend=a2a
    )
    note = known_wrong(a2a, quant, dispatch_format, ep_size=config.ep_size, hidden_pad=0)
    try:
        dynamic(d)  # type: ignore[misc]
    except Exception as error:  # SGLang's own failure modes: reported, not benchmarked
        dynamic = None
        note = f"raises {type(error).__name__}" + (f": {note}" if note else "")
    return dynamic, note

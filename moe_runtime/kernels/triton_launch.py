"""Launching a @triton.jit kernel at the cost of its compiled launcher, for the wire upscalers.

`kernel[grid](*args)` runs `JITFunction.run` (Triton 3.6, `triton/runtime/jit.py`) on every call:
it binds the arguments and computes their specialisation, then builds a string cache key
(`compute_cache_key`: `str(options)`), runs the pre-run hooks, checks that the kernel's globals
did not change, builds the launch metadata for the profiler hooks and only then calls
`CompiledKernel.run`, the C launcher. On the H200 host an upscaling runner spent 40-70 µs per
call, more than the three torch ops an fp8 wire's upscale replaced, most of it there.

`SpecialisedLaunch` keeps the one part that decides which compiled kernel fits the arguments,
Triton's own binder (`JITFunction.create_binder`: argument types, 16-byte alignment of pointers
and integers, integers equal to 1, constexpr values; on ROCm also the 2 GB buffer range), and
remembers the `CompiledKernel` of each (device, specialisation) in `Specialisations`:
- a specialisation seen before is launched straight through `CompiledKernel.run` with the grid,
  the current stream of the current device (what `JITFunction.run` uses: torch's current stream,
  so a CUDA graph capture records it), the kernel's function handle and packed metadata;
- a new one (another shape, stride, alignment or dtype) is compiled or found by Triton
  (`JITFunction.warmup`, which launches nothing), checked against the specialisation it was asked
  for, remembered, then launched the same way: a kernel compiled for another specialisation is
  never launched.
What it does not repeat per call: Triton's options (`TRITON_DEBUG`, the instrumentation mode) are
read when a specialisation is first compiled, and the globals check is Triton's, at compile time
(the kernels read only constexpr globals). While a hook is registered (a profiler's
`triton.knobs.runtime.launch_enter_hook` / `launch_exit_hook`, as Proton does, or a pre-run hook
of the kernel, `JITFunction.add_pre_run_hook`), every call goes through `kernel[grid](*args)`,
so the hooks run as Triton runs them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from triton import knobs
from triton.runtime import driver


class JitLaunch:
    """`kernel[grid](*args)`: Triton's own launch path (`JITFunction.run`), for comparison and
    while profiler hooks are registered."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel

    def __call__(self, grid_x: int, grid_y: int, *args: Any) -> None:
        self.kernel[(grid_x, grid_y)](*args)


class Compiled(NamedTuple):
    """What launching one compiled specialisation needs (`CompiledKernel.run`'s first arguments)."""

    run: Any
    function: Any
    packed_metadata: Any


class SpecialisationMismatch(RuntimeError):
    """Triton returned a kernel compiled for other argument types or constants than asked for."""


class Specialisations(dict[tuple[Any, ...], Compiled]):
    """(device, Triton's specialisation of the arguments) -> the compiled kernel for it.

    `add` compiles a key not seen yet (or finds it in Triton's caches) with `JITFunction.warmup`
    on the arguments that produced it, and checks it: the compiled kernel's argument types,
    divisibility attributes and constants must be those of the key, else
    `SpecialisationMismatch` names the argument that differs.
    """

    def __init__(self, kernel: Any) -> None:
        super().__init__()
        self._kernel = kernel
        self._names: list[str] = list(kernel.arg_names)

    def add(self, key: tuple[Any, ...], grid: tuple[int, int], args: tuple[Any, ...]) -> Compiled:
        compiled = self._kernel.warmup(*args, grid=grid)
        if compiled is None:
            raise SpecialisationMismatch(
                f"{self._kernel}: Triton compiled nothing (a jit_cache_hook skipped the "
                "compilation), so there is no kernel to launch"
            )
        if hasattr(compiled, "result"):  # Triton's async compile mode hands back a future
            compiled = compiled.result()
        for index, (name, (kind, value)) in enumerate(zip(self._names, key[1:], strict=True)):
            self._check(compiled.src, index, name, kind, value)
        entry = Compiled(compiled.run, compiled.function, compiled.packed_metadata)
        self[key] = entry
        return entry

    def _check(self, source: Any, index: int, name: str, kind: str, value: Any) -> None:
        """Argument `index` of the compiled kernel (`ASTSource`) is specialised as asked."""
        where = f"{self._kernel}, argument {name}"
        if source.signature.get(name) != kind:
            raise SpecialisationMismatch(
                f"{where}: specialised as {kind!r}, compiled as {source.signature.get(name)!r}"
            )
        if kind == "constexpr":
            if source.constants.get((index,)) != value:
                raise SpecialisationMismatch(
                    f"{where}: constexpr {value!r} in the call, "
                    f"{source.constants.get((index,))!r} in the compiled kernel"
                )
            return
        # "D": a multiple of 16 (an integer) or 16-byte aligned (a pointer), which the kernel
        # may rely on (tt.divisibility); the compiled kernel must assume it exactly when it holds.
        divisible = ["tt.divisibility", 16] in source.attrs.get((index,), [])
        if divisible != ("D" in (value or "")):
            raise SpecialisationMismatch(
                f"{where}: divisibility by 16 is {'D' in (value or '')} in the call, "
                f"{divisible} in the compiled kernel"
            )


class SpecialisedLaunch:
    """A @triton.jit kernel launched through the compiled kernel of its specialisation.

    `launch(grid_x, grid_y, *args)` takes every kernel parameter positionally, constexprs
    included, in the kernel's order (so the binder gets no keyword arguments to sort out).
    """

    def __init__(self, kernel: Any) -> None:
        self.jit = JitLaunch(kernel)
        # Triton's binder for this kernel on the current target (the same function
        # JITFunction.run calls); it returns (arguments, specialisation, options).
        _, _, _, _, self._binder = kernel.create_binder()
        self.specialisations = Specialisations(kernel)
        self._current_device = driver.active.get_current_device
        self._current_stream = driver.active.get_current_stream
        self._enter_hooks = knobs.runtime.launch_enter_hook
        self._exit_hooks = knobs.runtime.launch_exit_hook
        self._pre_run_hooks = kernel.pre_run_hooks  # a list add_pre_run_hook appends to

    def __call__(self, grid_x: int, grid_y: int, *args: Any) -> None:
        if self._enter_hooks.calls or self._exit_hooks.calls or self._pre_run_hooks:
            self.jit(grid_x, grid_y, *args)
            return
        device = self._current_device()
        key = (device, *self._binder(*args)[1])
        compiled = self.specialisations.get(key) or self.specialisations.add(
            key, (grid_x, grid_y), args
        )
        compiled.run(
            grid_x,
            grid_y,
            1,
            self._current_stream(device),
            compiled.function,
            compiled.packed_metadata,
            None,  # launch metadata: only profiler hooks read it, and none is registered
            None,
            None,
            *args,
        )


def launcher(kernel: Any) -> SpecialisedLaunch | JitLaunch:
    """The fast launch for a compiled kernel; Triton's own path under `TRITON_INTERPRET=1`
    (the interpreter's kernels have no compiled form to launch)."""
    if knobs.runtime.interpret:
        return JitLaunch(kernel)
    return SpecialisedLaunch(kernel)

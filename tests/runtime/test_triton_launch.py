"""The fast Triton launch (moe_runtime.kernels.triton_launch) without a GPU: Triton compiles a
small kernel for sm90 ahead of time (its bundled ptxas) under a recording driver, so what the
launcher does can be observed call by call: which compiled kernel each launch uses, with which
grid, stream and arguments, when it compiles, and what it refuses. Running the kernels, bit for
bit against the torch code, is tests/gpu/test_triton_launch.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import torch

triton = pytest.importorskip("triton", reason="the fast launch is Triton's; Triton is optional")
import triton.language as tl  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.driver import DriverBase  # noqa: E402
from triton.runtime import driver  # noqa: E402

from moe_runtime.kernels import triton_launch  # noqa: E402

STREAM = 4242


@triton.jit
def _scaled_copy(src_ptr, out_ptr, n, stride, FACTOR: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(src_ptr + offsets * stride, mask=offsets < n)
    tl.store(out_ptr + offsets, x * FACTOR, mask=offsets < n)


# One launch as the compiled kernel's launcher received it.
_Launch = dict[str, Any]


class _RecordingLauncher:
    """Stands in for Triton's CudaLauncher (`CompiledKernel.run`): records, launches nothing."""

    launches: ClassVar[list[_Launch]] = []

    def __init__(self, src: Any, metadata: Any) -> None:
        self.signature = dict(src.signature)
        self.constants = dict(src.constants)
        # The argument indices the kernel may assume divisible by 16 (tt.divisibility).
        self.divisible = {
            i for (i,), attrs in src.attrs.items() if ["tt.divisibility", 16] in attrs
        }

    def __call__(self, *args: Any) -> None:
        grid, (stream, function, _, metadata, enter, exit_), kernel_args = (
            args[:3],
            args[3:9],
            args[9:],
        )
        self.launches.append(
            _Launch(
                grid=grid,
                stream=stream,
                function=function,
                signature=self.signature,
                constants=self.constants,
                divisible=self.divisible,
                metadata=metadata,
                hooks=(enter, exit_),
                args=kernel_args,
            )
        )


class _Utils:
    def load_binary(self, name: str, kernel: bytes, shared: int, device: int) -> tuple[Any, ...]:
        return ("module", f"function {name} #{len(kernel)}", 0, 0, 1024)

    def get_device_properties(self, device: int) -> dict[str, int]:
        return {"max_shared_mem": 228 * 1024}


class _RecordingDriver(DriverBase):
    """An sm90 target on device 0 whose launcher records (enough for Triton to compile, load
    and 'launch')."""

    def __init__(self) -> None:
        self.utils = _Utils()
        self.launcher_cls = _RecordingLauncher

    @classmethod
    def is_active(cls) -> bool:
        return True

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return STREAM

    def get_device_interface(self) -> Any:
        return None

    def get_benchmarker(self) -> Any:
        return None

    def map_python_to_cpp_type(self, ty: str) -> str:
        return ty


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[_Launch]]:
    monkeypatch.setattr(driver, "_active", _RecordingDriver())
    monkeypatch.setattr(_RecordingLauncher, "launches", [])
    # A fresh JIT cache for the test kernel, so compilations are counted from zero.
    monkeypatch.setattr(
        _scaled_copy, "device_caches", type(_scaled_copy.device_caches)(_scaled_copy.create_binder)
    )
    yield _RecordingLauncher.launches


@pytest.fixture
def warmups(monkeypatch: pytest.MonkeyPatch, launches: list[_Launch]) -> list[tuple[Any, ...]]:
    """The argument tuples JITFunction.warmup was asked to compile."""
    seen: list[tuple[Any, ...]] = []
    original = _scaled_copy.warmup

    def counted(*args: Any, **kwargs: Any) -> Any:
        seen.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(_scaled_copy, "warmup", counted)
    return seen


def _args(
    n: int = 32,
    stride: int = 1,
    dtype: torch.dtype = torch.float32,
    offset: int = 0,
    factor: float = 2.0,
) -> tuple[Any, ...]:
    src = torch.zeros(n * stride + offset, dtype=dtype)[offset:]
    return (src, torch.empty(n, dtype=dtype), n, stride, factor, 64)


def test_a_seen_specialisation_launches_its_compiled_kernel_with_the_current_stream(
    launches: list[_Launch], warmups: list[tuple[Any, ...]]
) -> None:
    launch = triton_launch.SpecialisedLaunch(_scaled_copy)
    first, second = _args(), _args()  # other tensors, same specialisation
    launch(1, 1, *first)
    launch(3, 2, *second)
    assert len(warmups) == 1 and len(launch.specialisations) == 1
    a, b = launches
    assert b["grid"] == (3, 2, 1) and b["stream"] == STREAM
    assert b["function"] == a["function"] and b["function"].startswith("function _scaled_copy")
    assert b["args"] == second and b["args"][0] is second[0]
    # No profiler hook registered: no launch metadata is built and no hook is called.
    assert b["metadata"] is None and b["hooks"] == (None, None)
    assert b["signature"]["src_ptr"] == "*fp32"


@pytest.mark.parametrize(
    ("name", "changed", "argument", "specialised_as"),
    [
        ("n == 1 is a constexpr", {"n": 1}, "n", "constexpr"),
        ("n not a multiple of 16", {"n": 17}, "n", "i32"),
        ("another stride", {"stride": 2}, "stride", "i32"),
        ("another dtype", {"dtype": torch.float16}, "src_ptr", "*fp16"),
        ("an unaligned pointer", {"offset": 1}, "src_ptr", "*fp32"),
        ("another constexpr", {"factor": 3.0}, "FACTOR", "constexpr"),
    ],
)
def test_a_change_between_calls_compiles_and_launches_its_own_kernel(
    launches: list[_Launch],
    warmups: list[tuple[Any, ...]],
    name: str,
    changed: dict[str, Any],
    argument: str,
    specialised_as: str,
) -> None:
    launch = triton_launch.SpecialisedLaunch(_scaled_copy)
    launch(1, 1, *_args())
    launch(1, 1, *_args(**changed))
    launch(1, 1, *_args())  # and back: the first kernel again, not recompiled
    assert len(warmups) == 2 and len(launch.specialisations) == 2, name
    base, other, again = launches
    assert other["signature"][argument] == specialised_as
    assert again["function"] == base["function"]
    # Each launch's compiled kernel is the one for its own arguments' specialisation: types,
    # constexpr values and divisibility.
    for record in launches:
        spec = launch._binder(*record["args"])[1]
        assert [kind for kind, _ in spec] == list(record["signature"].values())
        assert {
            i for i, (k, v) in enumerate(spec) if k != "constexpr" and "D" in (v or "")
        } == record["divisible"]
        assert {(i,): v for i, (k, v) in enumerate(spec) if k == "constexpr"} == record["constants"]
    # Negative control: the changed call's kernel differs from the base one in what it assumes.
    assert (other["signature"], other["constants"], other["divisible"]) != (
        base["signature"],
        base["constants"],
        base["divisible"],
    )


def _compiled_for(args: tuple[Any, ...]) -> Any:
    return _scaled_copy.warmup(*args, grid=(1, 1))


@pytest.mark.parametrize(
    ("asked", "compiled", "says"),
    [
        (_args(dtype=torch.float16), _args(), r"argument src_ptr: specialised as '\*fp16'"),
        (_args(factor=3.0), _args(), "argument FACTOR: constexpr 3.0 in the call, 2.0"),
        (_args(offset=1), _args(), "argument src_ptr: divisibility by 16 is False in the call"),
        (_args(n=1), _args(), "argument n: specialised as 'constexpr', compiled as 'i32'"),
    ],
    ids=["dtype", "constexpr", "alignment", "int specialisation"],
)
def test_a_kernel_compiled_for_another_specialisation_is_never_launched(
    launches: list[_Launch],
    monkeypatch: pytest.MonkeyPatch,
    asked: tuple[Any, ...],
    compiled: tuple[Any, ...],
    says: str,
) -> None:
    launch = triton_launch.SpecialisedLaunch(_scaled_copy)
    wrong = _compiled_for(compiled)
    monkeypatch.setattr(_scaled_copy, "warmup", lambda *args, **kwargs: wrong)
    with pytest.raises(triton_launch.SpecialisationMismatch, match=says):
        launch(1, 1, *asked)
    assert launches == [] and len(launch.specialisations) == 0
    # Negative control: the same kernel for the arguments it was compiled for is launched.
    launch(1, 1, *compiled)
    assert len(launches) == 1


def test_a_skipped_compilation_is_refused(
    monkeypatch: pytest.MonkeyPatch, launches: list[_Launch]
) -> None:
    launch = triton_launch.SpecialisedLaunch(_scaled_copy)
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", lambda *args, **kwargs: True)
    with pytest.raises(triton_launch.SpecialisationMismatch, match="compiled nothing"):
        launch(1, 1, *_args(n=48))
    assert launches == []


def test_registered_profiler_hooks_get_tritons_own_launch(launches: list[_Launch]) -> None:
    launch = triton_launch.SpecialisedLaunch(_scaled_copy)
    launch(1, 1, *_args())
    calls: list[Any] = []
    knobs.runtime.launch_enter_hook.add(calls.append)
    try:
        launch(1, 1, *_args())
    finally:
        knobs.runtime.launch_enter_hook.remove(calls.append)
    launch(1, 1, *_args())
    fast, hooked, fast_again = launches
    assert hooked["metadata"] is not None and hooked["metadata"].get()["name"] == "_scaled_copy"
    assert hooked["hooks"] == (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
    assert fast["metadata"] is None and fast_again["metadata"] is None


def test_the_interpreter_gets_tritons_own_launch(
    monkeypatch: pytest.MonkeyPatch, launches: list[_Launch]
) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert isinstance(triton_launch.launcher(_scaled_copy), triton_launch.JitLaunch)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert isinstance(triton_launch.launcher(_scaled_copy), triton_launch.SpecialisedLaunch)


def test_a_pre_run_hook_gets_tritons_own_launch(
    monkeypatch: pytest.MonkeyPatch, launches: list[_Launch]
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(_scaled_copy, "pre_run_hooks", [])
    launch = triton_launch.SpecialisedLaunch(_scaled_copy)
    launch(1, 1, *_args())
    _scaled_copy.add_pre_run_hook(lambda *args, **kwargs: calls.append(args))
    launch(1, 1, *_args())
    assert len(calls) == 1 and len(launches) == 2

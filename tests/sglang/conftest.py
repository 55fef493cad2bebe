"""The SGLang integration tests run only in the venv `.ci/sglang` builds, against the real SGLang
release installed there; the main test run does not collect this directory (pyproject.toml).

A missing or unexpected SGLang is a collection error, never a skip.
"""

import collections
import importlib.metadata
import os
import sys
from pathlib import Path
from typing import Any

# The fake AITER goes first on the path, and moe_runtime binds it (as it binds AITER on ROCm), so
# SGLang's path and the generated runners pass the same enum members to the same kernel.
sys.path.insert(0, str(Path(__file__).resolve().parent / "fake_aiter"))
os.environ["MOE_RUNTIME_KERNEL"] = "aiter"

import aiter
import sglang  # an ImportError here fails the run loudly

from moe_runtime import kernels

RELEASE = importlib.metadata.version("sglang")
_expected = os.environ.get("SGLANG_EXPECTED_VERSION")
if _expected and RELEASE != _expected:
    raise RuntimeError(f"expected SGLang {_expected} in this venv, found {RELEASE}")
if not aiter.__version__.endswith("+fake-sglang") or kernels.BINDING != "aiter":
    raise RuntimeError(
        f"the fake AITER of tests/sglang/fake_aiter must be bound; got aiter {aiter.__version__} "
        f"and moe_runtime binding {kernels.BINDING}"
    )


# How each combination was compared, counted by the tests and printed at the end of the run.
COUNTS: collections.Counter[str] = collections.Counter()


def pytest_report_header() -> str:
    return f"SGLang {RELEASE} from {sglang.__file__}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(f"SGLang {RELEASE} comparisons (combination x EP size):")
    for name, count in sorted(COUNTS.items()):
        terminalreporter.write_line(f"  {name}: {count}")

"""The README's model-layer snippet runs as written, and so does the demo it points to."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moe_runtime import demo

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippet() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("In a model layer") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "README.md: no python block after 'In a model layer'"
    return match.group(1)


def test_readme_snippet_runs_as_written() -> None:
    namespace: dict[str, object] = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(_snippet(), str(README), "exec"), namespace)
    combine_input = namespace["combine_input"]
    assert type(combine_input).__name__ == "DeepEPNormalCombineInput"
    hidden = combine_input.hidden_states  # type: ignore[attr-defined]
    assert hidden.shape == (5, 256) and bool(torch.isfinite(hidden.float()).all())
    assert printed.getvalue().strip() == "torch.Size([5, 256])"


def _args(*extra: str) -> list[str]:
    return ["--a2a", "deepep", "--quant", "fp8_block", "--dispatch", "deepep_normal", *extra]


def test_demo_matches_dense_math() -> None:
    result = demo.run(demo._parser().parse_args(_args("--ep", "2", "--repeat", "1")))
    assert result["module"] == "deepep__fp8_block__deepep_normal"
    assert sum(result["rows"]) > 0 and len(result["rows"]) == 2
    # fp8 activations and weights: a few percent of rms (bf16 paths are ~1e-3).
    assert result["relative_rms_error"] < 0.1


@pytest.mark.parametrize("quant", ["mxfp4", "mxfp8", "quark_w4a8_mxfp4"])
def test_demo_checks_swiglu_methods_against_swiglu(
    quant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Their runners force Swiglu; a silu dense MoE gave these a relative rms error of ~1 (and the
    # demo said nothing).
    argv = ["--a2a", "none", "--quant", quant, "--dispatch", "standard", "--repeat", "0"]
    result = demo.run(demo._parser().parse_args(argv))
    assert result["mismatch"] is None and result["relative_rms_error"] < 0.1
    assert demo.main(argv) == 0
    assert "check         ok" in capsys.readouterr().out


def test_demo_error_detects_a_wrong_output(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Negative control: a combine that loses every row must read as an error of the whole output,
    # and the demo must fail.
    monkeypatch.setattr(demo.emulate, "combine", lambda dispatched, inputs: torch.zeros(32, 256))
    result = demo.run(demo._parser().parse_args(_args("--repeat", "1")))
    assert result["relative_rms_error"] > 0.9
    assert result["mismatch"] is not None
    assert demo.main(_args("--repeat", "1")) == 1
    assert "check         FAILED: dissimilarity" in capsys.readouterr().out


def test_demo_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "moe_runtime.demo", *_args("--ep", "2", "--repeat", "2")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "deepep/fp8_block/deepep_normal" in done.stdout
    assert re.search(r"error +\d\.\d+e-0[1-3] relative rms", done.stdout), done.stdout
    assert "check         ok" in done.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--a2a", "none", "--quant", "unquant", "--dispatch", "deepep_ll"], "closest supported"),
        (_args("--ep", "3"), "must split evenly"),
    ],
)
def test_demo_refuses_with_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert demo.main(argv) == 2
    assert message in capsys.readouterr().err

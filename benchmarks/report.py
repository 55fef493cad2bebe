"""The markdown a benchmark prints: tables, number cells, the machine and the command that
produced them, and the section written to stdout and optionally to a file."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device, *, threads: int | None = None) -> str:
    """One line naming the machine or card, and the software that produced a table (`threads`:
    the intra-op threads the measurement ran with, when not the current setting)."""
    software = (
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{threads or torch.get_num_threads()} intra-op thread(s)"
    )
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{name} (CUDA {torch.version.cuda}); host {_cpu_model()}; {software}"
    return f"CPU {_cpu_model()}, {os.cpu_count()} logical cores; {software}"


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces a run of `module` with `argv` (None: this process's)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m", module, *(shlex.quote(a) for a in arguments)])


def emit(title: str, body: str, *, out_dir: Path | None, filename: str) -> None:
    """Print a markdown section to stdout and, with `out_dir`, write it to `out_dir/filename`."""
    text = f"### {title}\n\n{body}\n"
    print(text, flush=True)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / filename).write_text(text)



def command_note(module: str, argv: Sequence[str] | None, started: float) -> str:
    """The `Command:` sentence of a report: what reproduces the run, and its seconds since
    `started` (a `time.perf_counter()` reading)."""
    return f"Command: `{command_line(module, argv)}` ({time.perf_counter() - started:.0f} s)."


def emit_for(
    device: torch.device, title: str, body: str, *, out_dir: Path | None, stem: str
) -> None:
    """`emit` for a section measured on one device: its type closes the title in parentheses and
    the file name (`{stem}_{type}.md`), so that CPU and CUDA runs sit side by side."""
    emit(f"{title} ({device.type})", body, out_dir=out_dir, filename=f"{stem}_{device.type}.md")

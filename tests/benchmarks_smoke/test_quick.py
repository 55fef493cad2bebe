"""CI smoke test of the issue-5 benchmarks: their `--quick` modes run and produce numbers.

Timings are never asserted (CI machines vary); what is asserted is that every benchmark runs end
to end on a few combinations, that every number it reports is finite and positive (counts: whole
and non-negative), and that the helpers the numbers rest on (op counting, call comparison, the
choice of combinations) do what they claim, each with a negative control.
"""

from __future__ import annotations

import math

import pytest
import torch

import generated
from benchmarks import compile_breaks, cuda_graphs, host_overhead, launches
from benchmarks.common import (
    STATIC_SHAPE_FORMATS,
    representative_keys,
    same_call,
)
from moe_runtime.testing.recording import KernelCall

# Cover the four kinds of hot path: id conversion, slab flattening with an fp8 wire, a MORI
# upscale, and the standard format; plus a combination whose dynamic path raises.
QUICK_KEYS = (
    "deepep/unquant/deepep_normal",
    "deepep/fp8_block/deepep_ll_fp8",
    "mori/fp8_block/mori_normal_fp4",
    "none/unquant/standard",
    "nixl/unquant/deepep_ll",
)


def _only(keys: tuple[str, ...]) -> list[str]:
    return [argument for key in keys for argument in ("--only", key)]


def test_host_overhead_quick_reports_positive_times(capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    results = host_overhead.main(["--quick", *_only(QUICK_KEYS)])
    assert torch.get_num_threads() == threads  # the benchmark restores the caller's setting
    assert [r.case.key for r in results] == [tuple(k.split("/")) for k in QUICK_KEYS]
    for r in results:
        times = [r.generated, r.hand_written, r.floor]
        assert all(math.isfinite(t) and t > 0 for t in times), r
    by_key = {"/".join(r.case.key): r for r in results}
    # NIXL defines no expert mask: SGLang's path raises there, so it has no time; others do.
    assert by_key["nixl/unquant/deepep_ll"].dynamic is None
    dynamic_times = [r.dynamic for k, r in by_key.items() if k != "nixl/unquant/deepep_ll"]
    assert all(t is not None and math.isfinite(t) and t > 0 for t in dynamic_times)
    printed = capsys.readouterr().out
    assert "### Host overhead per call (cpu)" in printed
    assert all(f"`{key}`" in printed for key in QUICK_KEYS)


def test_launches_quick_reports_counts() -> None:
    counts = launches.main(["--quick", *_only(QUICK_KEYS[:2])])
    assert len(counts) == 2
    for per_variant in counts:
        assert set(per_variant) == {"generated", "dynamic", "hand-written"}
        for count in per_variant.values():
            assert isinstance(count.ops, int) and count.ops >= 0
            assert count.ops == sum(
                int(name.split("×")[1]) if "×" in name else 1 for name in count.op_names
            )


def test_op_counter_counts_kernels_not_views_or_allocations() -> None:
    x = torch.arange(12, dtype=torch.float32)
    with launches.OpCounter() as counter:
        y = x.view(3, 4)[1:]
        torch.empty(3)
        torch.where(x > 3, x, 7.0)
    # The Python scalar of `where` becomes a 0-dim tensor on x's device: a fill kernel on a GPU.
    assert dict(counter.ops) == {"gt": 1, "scalar_tensor": 1, "where": 1}
    assert y.shape == (2, 4)
    # In-place ops also return an alias of their input, but one they write: counted.
    with launches.OpCounter() as control:
        (x + 1).mul_(2)
    assert dict(control.ops) == {"add": 1, "mul_": 1}


def test_same_call_finds_a_changed_argument() -> None:
    ids = torch.tensor([[0, 1]], dtype=torch.int32)
    weights = torch.ones(1, 2)
    x, w = torch.ones(1, 4), torch.ones(2, 4, 4)
    call = KernelCall((x, w, w, weights, ids), {"quant_type": 0})
    copied = KernelCall((x.clone(), w, w, weights, ids.clone()), {"quant_type": 0})
    assert same_call(call, copied) == []
    perturbed = ids.clone()
    perturbed[0, 1] = 2
    assert same_call(call, KernelCall((x, w, w, weights, perturbed), {"quant_type": 0})) == [
        "topk_ids"
    ]
    assert same_call(call, KernelCall((x, w, w, weights, ids), {"quant_type": 5})) == [
        "quant_type"
    ]


def test_representative_keys_cover_every_format_once_per_hot_path() -> None:
    keys = representative_keys()
    assert set(keys) <= set(generated.RUNNERS)
    assert {key[2] for key in keys} == {key[2] for key in generated.RUNNERS}
    # Runners of the same a2a-free hot path are interchangeable: NIXL's and DeepEP's LL bodies
    # are the same text, so only one of them is a representative.
    assert ("deepep", "unquant", "deepep_ll") in keys
    assert ("nixl", "unquant", "deepep_ll") not in keys


def test_compile_breaks_quick_reports_graph_counts() -> None:
    keys = ("deepep/unquant/deepep_normal", "deepep/fp8_block/deepep_ll_fp8")
    rows = compile_breaks.main(["--quick", *_only(keys)])
    assert len(rows) == 2
    for row in rows:
        assert row.generated.graphs >= 1 and row.generated.breaks >= 0
        assert row.generated.ops >= 1 and row.generated.guards >= 1
        assert row.fullgraph == "ok" or row.matches_eager is None
    # SGLang's low-latency path is wrong but runs: it is traced all the same.
    assert [row.dynamic_wrong for row in rows] == [False, True]
    assert all(row.dynamic is not None and row.dynamic.graphs >= 1 for row in rows)


def test_cuda_graphs_capture_static_formats_only_and_needs_cuda() -> None:
    keys = cuda_graphs.graph_keys(all_keys=False, only=[])
    assert {key[2] for key in keys} == set(STATIC_SHAPE_FORMATS)
    assert all(key[2] != "deepep_normal" for key in keys)
    assert len(keys) == sum(1 for key in generated.RUNNERS if key[2] != "deepep_normal")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="need a CUDA device"):
            cuda_graphs.main(["--quick"])

"""What drives and checks the runners outside a model: the emulated dispatchers (`emulate`), the
weight builder (`weights`), SGLang 0.5.13's re-implemented dynamic path (`dynamic`, the oracle and
baseline of the generated runners), the dense float64 oracle (`dense`) and the recording kernel
that tests and benchmarks bind (`recording`).

Nothing here is imported by generated code; tests, benchmarks, `moe_runtime.demo`,
`moe_runtime.ep_run` and the emulated collectives of `moe_runtime.distributed` use it.
"""

"""What drives and checks the runners outside a model: the emulated dispatchers (`emulate`), the
weight builder (`weights`), SGLang 0.5.13's re-implemented dynamic path (`dynamic`, the oracle and
baseline of the generated runners), the dense float64 oracle (`dense`), the EP launcher's
per-rank float64 share (`ep_oracle`) and the recording kernel that tests and benchmarks bind
(`recording`).

Nothing here is imported by generated code or by the runtime proper (`moe_runtime.distributed`
included: what it shares with the emulation, the format facts and the stale values, is the
runtime's `moe_runtime.formats` and `moe_runtime.stale`); tests, benchmarks and the two drivers
`moe_runtime.demo` and `moe_runtime.ep_run` use it.
"""

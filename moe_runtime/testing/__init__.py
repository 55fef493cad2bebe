"""What drives and checks the runners outside a model: the dense float64 oracle (`dense`).

Nothing here is imported by generated code; tests, benchmarks and `moe_runtime.demo` use it.
"""
